"""ui/runner.py and ui/run_state.py: one run at a time, re-attach after a restart, stop then kill, the event fold.

The processes here are stand-ins that only sleep: these tests check the process bookkeeping (pids, lock, control
files, kill). The real engine is driven end to end by tests/e2e/test_gui_browser.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config.load import preset_from_dict
from engine.events import EventWriter
from engine.runs import create_run_dir, list_runs
from ui import runner
from ui.run_state import RunView, format_seconds


def make_run(root: Path, name: str = "r") -> Path:
    return create_run_dir(preset_from_dict({"output": {"run_name": name}}), root)


def sleeper(run_dir: Path, runs_root: Path, seconds: int = 60) -> subprocess.Popen:
    """A process that stands where the engine would, recorded the way start_run records the engine."""
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"],
                            start_new_session=True)
    record = json.dumps({"pid": proc.pid, "run_dir": str(run_dir), "started": time.time()})
    (run_dir / runner.PID_NAME).write_text(record, encoding="utf-8")
    (runs_root / runner.LOCK_NAME).write_text(record, encoding="utf-8")
    runner._children[proc.pid] = proc
    return proc


def test_active_run_is_found_from_the_lock_and_by_scanning(tmp_path):
    runs = tmp_path / "runs ü"
    old, live = make_run(runs, "old"), make_run(runs, "live")
    EventWriter(old / "events.jsonl").emit("done")
    proc = sleeper(live, runs)
    try:
        assert runner.active_run(runs) == live
        (runs / runner.LOCK_NAME).unlink()  # a GUI restart after the lock was lost: the scan still finds it
        assert runner.active_run(runs) == live
        with pytest.raises(runner.RunBusy, match="live"):
            runner.start_run(old, runs, resume=True)
    finally:
        proc.kill()
        proc.wait()
    assert runner.active_run(runs) is None


def test_a_finished_run_is_not_active_even_if_its_pid_lives(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs)
    proc = sleeper(run, runs)
    try:
        EventWriter(run / "events.jsonl").emit("stopped", step=3)
        assert runner.active_run(runs) is None
    finally:
        proc.kill()
        proc.wait()


def test_a_resumed_run_is_active_although_its_folder_holds_the_earlier_stop(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs)
    with open(run / "events.jsonl", "w", encoding="utf-8") as f:  # the first process stopped a minute ago
        f.write(json.dumps({"t": time.time() - 60, "kind": "stopped", "step": 7}) + "\n")
    proc = sleeper(run, runs)  # the resumed process, not yet at its first event
    try:
        assert runner.is_running(run) and runner.active_run(runs) == run
    finally:
        proc.kill()
        proc.wait()


def test_requests_and_kill(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs)
    proc = sleeper(run, runs)
    runner.request(run, "stop")
    runner.request(run, "sample_now")
    assert (run / "control" / "stop").exists() and (run / "control" / "sample_now").exists()
    with pytest.raises(ValueError, match="one of stop, sample_now, save_now"):
        runner.request(run, "explode")
    assert runner.kill(run) is True
    assert proc.wait(timeout=10) != 0
    assert not runner.pid_alive(proc.pid) and runner.kill(run) is False
    assert runner.stop_deadline_passed(time.time() - 61, 60) and not runner.stop_deadline_passed(None, 60)


def test_stop_kills_a_late_engine_without_any_browser_tab(tmp_path):
    """runner.stop's own thread ends the engine after the timeout (no Run tab timer is ticking here)."""
    runs = tmp_path / "runs"
    run = make_run(runs)
    proc = sleeper(run, runs)
    runner.stop(run, timeout_s=0.5).join(timeout=15)
    assert (run / "control" / "stop").exists() and proc.wait(timeout=10) != 0


def test_the_stop_thread_spares_a_process_started_later_in_the_folder(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs)
    first = sleeper(run, runs)
    thread = runner.stop(run, timeout_s=1.5)
    first.kill()
    first.wait()
    resumed = sleeper(run, runs)  # Resume wrote a new pid before the old stop's deadline
    try:
        thread.join(timeout=15)
        assert resumed.poll() is None and runner.is_running(run)
    finally:
        resumed.kill()
        resumed.wait()


def gui_context(runs_root: Path):
    pytest.importorskip("gradio")
    from ui.app import AppContext
    return AppContext(runs_root=runs_root)  # runs follow each preset's output.dir, as in `python gui.py`


def test_runs_outside_runs_root_are_found_after_a_restart_and_block_a_second_start(tmp_path):
    from engine.config.save import save_preset
    from ui import tab_run
    ctx = gui_context(tmp_path / "gui runs")
    preset = preset_from_dict({"output": {"dir": str(tmp_path / "preset runs ü"), "run_name": "mine"}})
    preset_file = save_preset(preset, tmp_path / "mine.yaml")
    run = make_run(tmp_path / "preset runs ü", "mine")
    assert tab_run.attach(ctx) is None  # nothing under ctx.runs_root
    proc = sleeper(run, run.parent)  # its lock is beside it, not in ctx.runs_root
    try:
        view = tab_run.attach(ctx, preset_file)  # a reload: the browser remembers the preset
        assert view is not None and view.run_dir.resolve() == run.resolve() and not view.finished
        with pytest.raises(runner.RunBusy, match="mine"):
            tab_run.start_new(preset, ctx)
        assert list_runs(run.parent) == [run]  # no second run folder was made
    finally:
        proc.kill()
        proc.wait()
    EventWriter(run / "events.jsonl").emit("done")
    view = tab_run.attach(ctx, preset_file)  # finished, lock gone: still the run shown after a GUI restart
    assert view is not None and view.run_dir.resolve() == run.resolve() and view.finished == "done"
    assert str(run.resolve()) in ctx.allowed_paths  # its samples and LoRA files can be served


def test_start_run_spawns_the_engine_with_a_log_file(tmp_path):
    """The real `python -m engine train RUN_DIR` on a preset without a dataset: it fails fast, in words, and the
    GUI sees the error event (and the log file holds the engine's output)."""
    runs = tmp_path / "runs"
    run = make_run(runs)
    proc = runner.start_run(run, runs)
    assert proc.wait(timeout=180) != 0
    assert json.loads((run / runner.PID_NAME).read_text("utf-8"))["pid"] == proc.pid
    assert (run / runner.LOG_NAME).stat().st_size > 0
    view = RunView(run)
    view.poll()
    assert view.finished == "error" and view.error["message"]
    assert runner.active_run(runs) is None


def test_run_view_folds_events(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    png = run / "samples" / "s.png"
    png.write_bytes(b"\x89PNG fake")
    w = EventWriter(run / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cpu")
    for n in range(1, 4):
        w.emit("status", phase="caching", text="Caching latents", n=n, total=3)
    view = RunView(run)
    view.poll()
    assert [line.split(" ", 1)[1] for line in view.log] == ["started on cpu", "caching: Caching latents (3/3)"]
    w.emit("step", step=10, total_steps=40, epoch=1, loss=0.25, lr={"unet": 1e-4}, s_per_it=0.5, eta_s=15,
           vram_gb=None)
    w.emit("sample", path=str(png), prompt="ohwx", strength=1.0, step=10)
    w.emit("sample", path=str(run / "gone.png"), prompt="x", strength=1.0, step=10)
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"t": 1, "kind": "sav')  # half a line: left for the next poll
    assert view.poll() == 3
    assert view.progress_text() == "Step 10/40 · 0.50 s/it · ETA 15s" and view.fraction() == 0.25
    assert view.loss_points == [(10, 0.25)] and view.gallery() == [(str(png), "step 10 · strength 1.0 · ohwx")]
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('ed", "path": "x", "format": "kohya", "step": 10}\n')
    w.emit("error", message="CUDA out of memory", hint="Lower the batch size", traceback="...")
    view.poll()
    assert view.finished == "error" and view.error["hint"] == "Lower the batch size"
    assert len(view.saved) == 1 and view.output_files() == []  # the file does not exist
    assert format_seconds(3725) == "1h 02m" and format_seconds(75) == "1m 15s"


def test_the_log_says_how_many_gpus_train_and_the_effective_batch(tmp_path):
    w = EventWriter(tmp_path / "run" / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cuda:0 RTX 4090 (24 GB)", processes=2, effective_batch=8)
    view = RunView(tmp_path / "run")
    view.poll()
    assert view.log[0].split(" ", 1)[1] == "started on cuda:0 RTX 4090 (24 GB) and 1 more GPU(s), effective batch 8"


def test_the_loss_plot_gets_numbers_even_before_the_first_step(tmp_path):
    from ui.tab_run import _loss_frame

    w = EventWriter(tmp_path / "run" / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cpu")
    view = RunView(tmp_path / "run")
    view.poll()
    empty = _loss_frame(view)
    assert str(empty["step"].dtype) == "int64" and str(empty["loss"].dtype) == "float64"  # not object: numeric axes
    w.emit("step", step=1, total_steps=2, epoch=1, loss=0.5, lr={"unet": 1e-4}, s_per_it=0.1, eta_s=0.1, vram_gb=None)
    view.poll()
    assert _loss_frame(view).dropna().values.tolist() == [[1, 0.5, "training"]]
    assert set(empty["series"]) == {"training", "validation"}   # both series from the first frame on


def test_the_run_log_shows_rl_epochs_and_sample_rewards():
    from ui.run_state import event_line

    line = event_line({"t": 0, "kind": "rl", "rl_epoch": 3, "reward_mean": 0.51234, "reward_std": 0.0042,
                       "images": 8})
    assert line.endswith("RL epoch 3: reward 0.5123 ± 0.0042 over 8 images")
    sample = event_line({"t": 0, "kind": "sample", "step": 40, "strength": 1.0, "path": "s/step40.png", "reward": 0.7})
    assert "reward 0.7" in sample and sample.endswith("step40.png")


def test_a_buttons_message_goes_once_the_run_moves_on(tmp_path):
    """'Started: loading the model' stayed through training and after Finished; 'Stopping…' stayed after the stop."""
    from ui import tab_run
    from ui.tab_run import render

    w = EventWriter(tmp_path / "run" / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cpu")
    view = RunView(tmp_path / "run")
    view.poll()
    view.say("Started: the engine is loading the model.")
    parts = {k: k for k in tab_run.RENDERED}
    assert render(view, parts)["message"] == "Started: the engine is loading the model."
    w.emit("step", step=1, total_steps=9, epoch=1, loss=0.5, lr={"unet": 1e-4}, s_per_it=0.1, eta_s=1, vram_gb=None)
    view.poll()
    assert view.message() == "" and render(view, parts)["message"] == ""
    view.say("Asked the engine to sample at the next step.", until="next file")
    w.emit("step", step=2, total_steps=9, epoch=1, loss=0.4, lr={"unet": 1e-4}, s_per_it=0.1, eta_s=1, vram_gb=None)
    view.poll()
    assert view.message().startswith("Asked")          # still waiting for the sample
    w.emit("sample", path=str(tmp_path / "s.png"), prompt="x", strength=1.0, step=2)
    view.poll()
    assert view.message() == ""
    view.stop_requested_at = 1.0
    view.say("Stopping: …")
    assert view.message() == "Stopping: …"
    w.emit("stopped", step=2)
    view.poll()
    assert view.message() == "" and view.progress_text().startswith("Stopped at step 2")
    view.say("Demo run started.", until="finished")
    assert view.message() == ""                         # said after the end: nothing to keep it for


def test_the_loss_plot_shows_validation_and_the_files_put_the_best_checkpoint_first(tmp_path):
    from ui.tab_run import _loss_frame

    run = tmp_path / "run"
    best = run / "checkpoints" / "best"
    best.mkdir(parents=True)
    w = EventWriter(run / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cpu")
    last = run / "checkpoints" / "lora-step000040.safetensors"
    last.write_bytes(b"x")
    for step, loss in ((20, 0.31), (40, 0.27)):
        w.emit("step", step=step, total_steps=40, epoch=1, loss=loss + 0.1, lr={"unet": 1e-4}, s_per_it=0.1,
               eta_s=1, vram_gb=None)
        name = best / f"lora-epoch001-step{step:06d}-val_loss{loss:.4f}.safetensors"
        name.write_bytes(b"x")
        w.emit("saved", path=str(name), format="kohya", step=step)
        w.emit("val", step=step, val_loss=loss, best=min(0.31, loss))
    w.emit("saved", path=str(last), format="kohya", step=40)
    view = RunView(run)
    view.poll()
    frame = _loss_frame(view).dropna()
    assert sorted(set(frame["series"])) == ["training", "validation"]
    assert frame[frame["series"] == "validation"]["loss"].tolist() == [0.31, 0.27]
    assert view.output_files()[0].endswith("val_loss0.2700.safetensors")   # the best first
    assert "val_loss0.2700" in view.best_text() and "step 40" in view.best_text()
    assert any("validation loss 0.2700 at step 40 (the best so far)" in line for line in view.log)
    (best / "lora-epoch001-step000040-val_loss0.2700.safetensors").unlink()   # Best deleted it (not in the K best)
    assert "val_loss0.3100" in view.best_text()


def test_the_tensorboard_button_serves_the_runs_folder(tmp_path):
    import urllib.request

    from ui.tensorboard import open_board

    (tmp_path / "runs" / "a run" / "tensorboard").mkdir(parents=True)
    url = open_board(tmp_path / "runs", Path(__file__).resolve().parents[1])
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=30) as page:
        assert page.status == 200 and b"TensorBoard" in page.read()
    assert open_board(tmp_path / "runs", Path(__file__).resolve().parents[1]) == url   # one server per folder


def test_the_sample_grid_puts_steps_down_and_strengths_across_and_compares_two_steps(tmp_path):
    from ui import sample_grid, tab_run

    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    w = EventWriter(run / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cpu")
    for step in (0, 50, 100):
        for strength in (0.5, 1.0):
            for k, prompt in enumerate(("ohwx, a portrait", "ohwx, oil painting")):
                png = run / "samples" / f"step{step:06d}_p{k:02d}_s{strength:.2f}.png"
                png.write_bytes(b"\x89PNG fake")
                w.emit("sample", path=str(png), prompt=prompt, strength=strength, step=step)
    ckpt = run / "checkpoints" / "lora-step000050.safetensors"
    w.emit("saved", path=str(ckpt), format="kohya", step=50)
    view = RunView(run)
    view.poll()
    out = tab_run.render(view, {k: k for k in tab_run.RENDERED})
    html = out["grid"]
    assert html.count("<tr>") == 4 and html.count("strength 0.5</th>") == 1   # a header row and 3 steps
    assert html.index("step 0") < html.index("step 50") < html.index("step 100")
    assert "checkpoint saved" in html and "oil painting" not in html            # the first prompt only
    assert sample_grid.file_url(run / "samples" / "step000050_p00_s1.00.png") in html
    assert out["grid_step_a"]["value"] == 50 and out["grid_step_b"]["value"] == 100   # the last two steps
    compare = out["compare"]
    assert "step 50</th><th>step 100" in compare and compare.count("<img") == 4
    png = run / "samples" / "step000150_p00_s1.00.png"
    png.write_bytes(b"\x89PNG fake")
    w.emit("sample", path=str(png), prompt="ohwx, a portrait", strength=1.0, step=150)
    view.poll()
    out = tab_run.render(view, {k: k for k in tab_run.RENDERED})
    assert (out["grid_step_a"]["value"], out["grid_step_b"]["value"]) == (100, 150)   # they follow the newest
    view.grid, view.grid_chosen = ("ohwx, oil painting", 0, 100), True
    out = tab_run.render(view, {k: k for k in tab_run.RENDERED})
    assert "oil painting" in out["grid"] and "step 0</th><th>step 100" in out["compare"]
    assert "_p01_" in out["grid"] and "_p00_" not in out["grid"]


def test_a_counted_phase_between_steps_shows_in_the_progress_bar(tmp_path):
    """Reflow generates its pairs between training stretches: 'reflow 2/3: generating 40/80', not a frozen step."""
    w = EventWriter(tmp_path / "run" / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cpu")
    w.emit("step", step=120, total_steps=360, epoch=1, loss=0.3, lr={"unet": 1e-4}, s_per_it=0.1, eta_s=9,
           vram_gb=None)
    w.emit("status", phase="reflow", text="reflow 2/3: generating", n=40, total=80)
    view = RunView(tmp_path / "run")
    view.poll()
    assert view.progress_text() == "reflow 2/3: generating 40/80 · at step 120/360"
    w.emit("status", phase="reflow", text="reflow 2/3: generating", n=80, total=80)
    w.emit("step", step=121, total_steps=360, epoch=1, loss=0.3, lr={"unet": 1e-4}, s_per_it=0.1, eta_s=9,
           vram_gb=None)
    view.poll()
    assert view.progress_text().startswith("Step 121/360")


def test_previews_on_a_distilled_sibling_get_columns_of_their_own_in_the_grid(tmp_path):
    """model.preview_path: each sample is also rendered on Z-Image Turbo; those images sit beside the trained
    model's, never over them."""
    from ui import tab_run

    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    w = EventWriter(run / "events.jsonl")
    w.emit("started", preset={}, versions={}, device="cpu")
    for step in (10, 20):
        for prefix, preview in (("", None), ("preview_", "Z-Image Turbo")):
            png = run / "samples" / f"{prefix}step{step:06d}_p00_s1.00.png"
            png.write_bytes(b"\x89PNG fake")
            extra = {"preview": preview} if preview else {}
            w.emit("sample", path=str(png), prompt="ohwx", strength=1.0, step=step, **extra)
    view = RunView(run)
    view.poll()
    html = tab_run.render(view, {k: k for k in tab_run.RENDERED})["grid"]
    assert "<th>strength 1</th>" in html and "<th>Z-Image Turbo · strength 1</th>" in html
    assert html.count("<img") == 4 and "preview_step000020_p00_s1.00.png" in html
