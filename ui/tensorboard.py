"""The Run tab's TensorBoard button: one `python -m engine tensorboard RUNS --port 0` per runs folder, started on
first use and kept while the GUI runs (a subprocess: tensorboard imports TensorFlow-sized code the GUI should not
hold). The engine prints the URL on its first line; the button shows it as a link."""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from pathlib import Path

START_TIMEOUT_S = 90
_boards: dict[str, tuple[subprocess.Popen, str]] = {}
_lock = threading.Lock()


def open_board(runs_root: Path, cwd: Path) -> str:
    """The URL of TensorBoard over runs_root (started now if it is not running); RuntimeError in words."""
    key = str(Path(runs_root).resolve())
    with _lock:
        running = _boards.get(key)
        if running and running[0].poll() is None:
            return running[1]
        proc = subprocess.Popen([sys.executable, "-m", "engine", "tensorboard", key, "--port", "0"], cwd=str(cwd),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, encoding="utf-8", errors="replace",
                                env={**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"})
        url = _read_url(proc)
        _boards[key] = (proc, url)
        return url


def _read_url(proc: subprocess.Popen) -> str:
    """The http:// URL from the engine's 'TensorBoard for <folder>: <url>' line, within START_TIMEOUT_S."""
    lines: list[str] = []
    found: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("TensorBoard for ") and "http" in line:
                found.append(line[line.index("http"):].split()[0])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    if found:
        return found[0]
    proc.kill()
    said = " ".join(line for line in lines[-3:] if line) or f"no answer within {START_TIMEOUT_S} s"
    raise RuntimeError(f"TensorBoard did not start: {said}")


@atexit.register
def stop_all() -> None:
    """TensorBoard goes with the GUI (a run does not: it keeps training when the GUI closes)."""
    for proc, _ in _boards.values():
        if proc.poll() is None:
            proc.terminate()
