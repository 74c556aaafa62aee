"""The Runs tab: every run folder as a row (status, steps, last and best loss, files, when); the chosen run shows on
the Run tab, resumes, or opens in the file manager."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from engine.config.save import save_preset
from engine.config.schema import Preset
from engine.events import EventWriter
from ui import runner, tab_runs
from ui.app import AppContext, build_app
from ui.presets import PresetLibrary

ROOT = Path(__file__).resolve().parents[1]


def make_run(root: Path, name: str, finished: str, steps: int, val: float | None = None) -> Path:
    run = root / name
    (run / "checkpoints" / "best").mkdir(parents=True)
    save_preset(Preset(), run / "preset.yaml")
    w = EventWriter(run / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cpu")
    for step in range(1, steps + 1):
        w.emit("step", step=step, total_steps=10, epoch=1, loss=1.0 / step, lr={"unet": 1e-4}, s_per_it=0.1,
               eta_s=1, vram_gb=None)
    if val is not None:
        best = run / "checkpoints" / "best" / f"{name}-epoch001-step{steps:06d}-val_loss{val:.4f}.safetensors"
        best.write_bytes(b"x")
        w.emit("saved", path=str(best), format="kohya", step=steps)
        w.emit("val", step=steps, val_loss=val, best=val)
    w.emit(finished, **({"step": steps} if finished == "stopped" else {}))
    return run


@pytest.fixture
def app(tmp_path):
    tmp = tmp_path / "gui runs ü"
    shutil.copytree(ROOT / "presets", tmp / "shipped")
    ctx = AppContext(runs_root=tmp / "runs", demo_dir=tmp / "demo", use_preset_output_dir=False,
                     library=PresetLibrary(shipped_dir=tmp / "shipped", user_dir=tmp / "my presets"))
    make_run(ctx.runs_root, "portrait-20261201-100000", "done", 10, val=0.1234)
    make_run(ctx.runs_root, "style-20261202-090000", "stopped", 4)
    return build_app(ctx)


def fn(app, api_name):
    return next(f.fn for f in app.fns.values() if f.api_name == api_name)


def test_the_table_has_a_row_per_run_with_its_status_steps_losses_and_files(app):
    table = fn(app, "list_runs")(None)
    rows = {r["run"]: r for r in table.to_dict("records")}
    done, stopped = rows["portrait-20261201-100000"], rows["style-20261202-090000"]
    assert done["status"] == "done" and done["steps"] == "10/10" and done["best val loss"] == "0.1234"
    assert done["last loss"] == "0.1000" and done["files"] == 1
    assert stopped["status"] == "stopped" and stopped["steps"] == "4/10" and stopped["best val loss"] == ""
    assert Path(stopped["folder"]).is_dir() and stopped["started"][:4].isdigit()


def test_show_puts_the_run_on_the_run_tab_and_resume_restarts_it(app, monkeypatch):
    table = fn(app, "list_runs")(None)
    folder = table[table["run"] == "style-20261202-090000"]["folder"].iloc[0]
    out = fn(app, "show_run")(folder)
    view = next(v for v in out.values() if type(v).__name__ == "RunView")
    assert view.run_dir == Path(folder) and view.finished == "stopped" and len(view.loss_points) == 4
    assert any("Stopped at step 4" in str(v) for v in out.values())   # the progress bar says so
    started = []
    monkeypatch.setattr(runner, "start_run", lambda run_dir, root, resume=False: started.append((run_dir, resume)))
    out = fn(app, "resume_listed_run")(folder)
    assert started == [(Path(folder), True)]
    assert any("Resuming" in str(v) for v in out.values())
    assert "Choose a run" in str(fn(app, "show_run")(None))


def test_open_folder_says_where_it_is_when_no_file_manager_starts(tmp_path, monkeypatch):
    def no_manager(*args, **kwargs):
        raise FileNotFoundError("xdg-open")

    monkeypatch.setattr(tab_runs.subprocess, "Popen", no_manager)
    monkeypatch.setattr(tab_runs.sys, "platform", "linux")
    assert str(tmp_path) in tab_runs.open_folder(tmp_path) and "No file manager" in tab_runs.open_folder(tmp_path)
