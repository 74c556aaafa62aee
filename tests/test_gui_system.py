"""ui/tab_system.py: the System tab runs the system doctor in a subprocess (the GUI never imports torch), reports a
verdict and every finding with what to do, says in words when the doctor fails, and opens itself on a first visit
that needs attention."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from ui import tab_system

ROOT = Path(__file__).resolve().parents[1]

A_BROKEN_PC = {
    "counts": {"error": 1, "warning": 1, "info": 0, "ok": 1},
    "findings": [
        {"check": "gpu", "severity": "ok", "message": "GPU 0: NVIDIA GeForce GTX 1080, 8.0 GB VRAM.", "hint": ""},
        {"check": "gpu", "severity": "error", "message": "NVIDIA GeForce GTX 1080 (compute 6.1) has no code in "
                                                         "PyTorch's CUDA 13.0 build.",
         "hint": "Reinstall PyTorch with the CUDA 12.6 build: in cmd, `set EASEL_TORCH_CUDA=cu126` then run "
                 "install.bat."},
        {"check": "disk", "severity": "warning", "message": r"Only 9.5 GB free on the drive of the runs folder "
                                                            r"(C:\Easel\.runs_a).",
         "hint": "Free 20 GB or more."},
    ],
    "facts": {"gpus": [{"name": "NVIDIA GeForce GTX 1080", "compute": [6, 1], "vram_gb": 8.0, "bf16": None}],
              "cuda_available": True, "driver": "581.57", "torch": "2.13.0+cu130", "torch_cuda": "13.0",
              "ram_total_gb": 32.0, "ram_free_gb": 20.1,
              "disks": [{"label": "the runs folder", "path": r"C:\Easel\.runs_a", "free_gb": 9.5}]},
}
A_HEALTHY_PC = {
    "counts": {"error": 0, "warning": 0, "info": 0, "ok": 1},
    "findings": [{"check": "gpu", "severity": "ok", "message": "GPU 0: NVIDIA GeForce RTX 4090.", "hint": ""}],
    "facts": {"gpus": [{"name": "NVIDIA GeForce RTX 4090", "compute": [8, 9], "vram_gb": 24.0, "bf16": True}],
              "cuda_available": True, "driver": "581.57", "torch": "2.13.0+cu130", "torch_cuda": "13.0"},
}


class Ctx:
    """What the tab needs of ui.app.AppContext."""

    def __init__(self, runs_root: Path):
        self.project_root, self.runs_root = ROOT, runs_root


def fake_doctor(monkeypatch, code: str) -> None:
    """The doctor replaced by `python -c code` (fast: no torch)."""
    monkeypatch.setattr(tab_system, "doctor_command", lambda runs_root: [sys.executable, "-c", code])


def printing(result: dict, exit_code: int = 0) -> str:
    return f"import sys; print({json.dumps(result)!r}); sys.exit({exit_code})"


@pytest.fixture(scope="module")
def this_pc(tmp_path_factory):
    """The real doctor on this machine, once for the module (a later check of the same folder is cached)."""
    ctx = Ctx(tmp_path_factory.mktemp("system ü") / "runs")
    return ctx, tab_system.check(ctx.project_root, ctx.runs_root)


def test_the_real_doctor_runs_in_a_subprocess_and_reports_this_pc(this_pc):
    ctx, result = this_pc
    assert result["findings"] and {f["severity"] for f in result["findings"]} <= set(tab_system.SEVERITY_WORDS)
    report = tab_system.report_markdown(result)
    assert report.splitlines()[0].startswith("### ")
    assert "**OK:**" in report and "RAM:" in report and "Free disk:" in report
    if not result["facts"]["cuda_available"]:   # this test machine is CPU only; a CUDA one says ready or problems
        assert report.startswith("### No CUDA GPU: only the demos will be quick")
        assert tab_system.needs_attention(result)   # the doctor warns that training would run on the CPU
    started = time.monotonic()
    again = tab_system.check(ctx.project_root, ctx.runs_root)
    assert again["checked_at"] == result["checked_at"] and time.monotonic() - started < 0.5   # reused, not rerun


def test_the_report_leads_with_the_problems_and_says_what_to_do():
    report = tab_system.report_markdown(A_BROKEN_PC)
    lines = report.splitlines()
    assert lines[0] == "### 1 problem to fix before training, and 1 warning to read."
    assert "NVIDIA GeForce GTX 1080 (8.0 GB VRAM)" in report and "581.57" in report and "CUDA 13.0 build" in report
    assert "32.0 GB, 20.1 GB free" in report and "9.5 GB on the drive of the runs folder" in report
    error, warning, ok = (next(i for i, line in enumerate(lines) if line.startswith(f"- **{word}:**"))
                          for word in ("Error", "Warning", "OK"))
    assert error < warning < ok
    assert lines[error + 1] == "  What to do: Reinstall PyTorch with the CUDA 12.6 build: in cmd, " \
                               "`set EASEL_TORCH_CUDA=cu126` then run install.bat."   # code kept as code
    assert r"C:\\Easel\\.runs\_a" in lines[warning]   # escaped: Markdown shows the Windows path as it is
    assert tab_system.needs_attention(A_BROKEN_PC)
    assert tab_system.report_markdown(A_HEALTHY_PC).startswith(
        "### Ready to train on NVIDIA GeForce RTX 4090 (24.0 GB VRAM).")
    assert not tab_system.needs_attention(A_HEALTHY_PC) and tab_system.needs_attention(None)


def test_a_failing_doctor_is_an_error_in_words_and_is_not_cached(monkeypatch, tmp_path):
    fake_doctor(monkeypatch, "import sys; sys.stderr.write('Traceback: something broke\\n'); sys.exit(1)")
    with pytest.raises(RuntimeError, match=r"stopped without a result \(exit code 1\).*something broke"):
        tab_system.check(ROOT, tmp_path)
    fake_doctor(monkeypatch, printing(A_BROKEN_PC, exit_code=1))   # exit 1 with JSON: there are errors, it ran
    assert tab_system.check(ROOT, tmp_path)["findings"] == A_BROKEN_PC["findings"]


def test_a_hanging_doctor_times_out_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(tab_system, "TIMEOUT_S", 1)
    fake_doctor(monkeypatch, "import time; time.sleep(30)")
    with pytest.raises(RuntimeError, match="did not finish within 1 seconds.*Restart the PC"):
        tab_system.check(ROOT, tmp_path)
    report, result = tab_system.report_for(Ctx(tmp_path))
    assert result is None and report.startswith("### The system check could not run") and "Traceback" not in report


def test_the_tab_checks_on_click_and_a_banner_points_at_it_when_something_needs_attention(monkeypatch, tmp_path):
    fake_doctor(monkeypatch, printing(A_BROKEN_PC))
    ctx = Ctx(tmp_path / "runs")
    with gr.Blocks() as app:
        banner = gr.Markdown()
        with gr.Tabs():
            with gr.Tab("Run", id="run"):
                gr.Markdown("runs")
            with gr.Tab("System", id="system"):
                parts = tab_system.build()
        tab_system.wire(ctx, parts)
        tab_system.wire_first_start(ctx, app, parts, banner)
    assert parts["check"].elem_id == "system-check" and parts["report"].elem_id == "system-report"
    click = next(f for f in app.fns.values() if f.api_name == "system_check")
    assert click.outputs == [parts["report"]]
    assert click.fn().startswith("### 1 problem to fix before training")
    load = next(f for f in app.fns.values() if f.api_name == "system_first_start").fn
    report, shown, seen = load(False)
    assert report.startswith("### 1 problem") and "System" in shown and "1 problem" in shown and seen is True
    report, shown, seen = load(True)   # a later visit: an error still shows its banner
    assert "1 problem" in shown and seen is True
    fake_doctor(monkeypatch, printing(A_HEALTHY_PC))
    tab_system._cache.clear()   # a fresh check
    assert load(False)[1] == ""


def test_the_page_load_leaves_the_gpu_to_a_training_run(monkeypatch, tmp_path):
    fake_doctor(monkeypatch, "import sys; sys.exit('the doctor must not run during a run')")
    monkeypatch.setattr(tab_system.runner, "active_run", lambda runs_root: runs_root / "run-1")
    assert tab_system.first_start(Ctx(tmp_path), seen=False) == (tab_system.WAITING_FOR_RUN, "", False)
    assert tab_system.first_start(Ctx(tmp_path), seen=True)[2] is True
