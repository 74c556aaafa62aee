"""Helpers for the browser tests: start Easel's GUI in a subprocess, drive Debian's Chromium with Playwright.

No browser is downloaded: Playwright (the Python package) drives /usr/bin/chromium (apt-get install chromium).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path(os.environ.get("EASEL_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]
TABS = ("Dataset", "Captions", "Training", "Optimizer & LR", "Samples", "RL", "Run", "Runs", "System", "YAML")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]

# Started in the GUI subprocess: the app with every folder (runs, demo, user presets) in a temporary place.
GUI_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import gui
from ui.app import AppContext, build_app
from ui.presets import PresetLibrary
tmp = Path({tmp!r})
ctx = AppContext(runs_root=tmp / "runs", demo_dir=tmp / "demo", use_preset_output_dir=False,
                 library=PresetLibrary(user_dir=tmp / "my_presets"))
app = build_app(ctx)
gui.launch(app, gui.parse_args(["--no-browser", "--port", "{port}"]), block=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the GUI exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the GUI did not answer at {url} within {timeout_s} s")


@contextmanager
def running_gui(tmp: Path):
    """The GUI in a subprocess on a free port, everything it writes under tmp; yields (url, log path)."""
    port = free_port()
    log = tmp / "gui.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    script = GUI_SCRIPT.format(root=str(ROOT), tmp=str(tmp), port=port)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, proc)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000):
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory(prefix="easel-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": width,
                                                                                     "height": height})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


def textarea_js(elem_id: str, contains: str) -> str:
    """JS predicate: the textarea under #elem_id holds `contains` (a Textbox's text is its value, not its text)."""
    return (f"() => {{ const t = document.querySelector('#{elem_id} textarea'); "
            f"return !!t && t.value.includes({contains!r}); }}")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(300)
