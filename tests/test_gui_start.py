"""Start training runs the dataset doctor first: errors block with the list (and the Dataset tab's fix buttons),
warnings ask once ("Start anyway"); the form's edits live in the browser, and a reload shows the newest of them,
the saved file and the running run's preset."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from engine.config.load import preset_from_dict
from engine.config.save import dump_preset, preset_to_dict
from engine.config.schema import Preset
from tests.dataset_factory import make_clean_dataset
from ui import tab_run
from ui.app import AppContext, build_app
from ui.presets import PresetLibrary
from ui.run_state import RunView

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gui start ü")
    shutil.copytree(ROOT / "presets", tmp / "shipped")
    ctx = AppContext(runs_root=tmp / "runs", demo_dir=tmp / "demo", use_preset_output_dir=False,
                     library=PresetLibrary(shipped_dir=tmp / "shipped", user_dir=tmp / "my presets"))
    return build_app(ctx)


@pytest.fixture
def started(monkeypatch, tmp_path):
    """start_new recorded instead of spawning an engine."""
    calls = []

    def fake_start(preset, ctx):
        calls.append(preset)
        (tmp_path / "run").mkdir(exist_ok=True)
        return RunView(tmp_path / "run")

    monkeypatch.setattr(tab_run, "start_new", fake_start)
    return calls


def fn_of(app, api_name: str):
    return next(f for f in app.fns.values() if f.api_name == api_name)


def preset_on(folder: Path) -> Preset:
    data = preset_to_dict(Preset())
    data["dataset"].update(path=str(folder), trigger="ohwx", resolution_px=256)
    data["model"]["path"] = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # a Hub id: preflight accepts it
    data["sampling"]["prompts"] = ["ohwx, a portrait"]
    return preset_from_dict(data)


def start(app, preset: Preset, api_name: str = "start_run", accepted=None) -> dict:
    fn = fn_of(app, api_name)
    state = next(c for c in fn.inputs if isinstance(c, gr.State))   # the accepted warnings
    return fn.fn({**app.easel_form.updates_from_preset(preset), state: accepted}), state


def message_of(out: dict) -> str:
    return next(str(v) for k, v in out.items() if getattr(k, "elem_id", None) == "run-message")


def by_id(out: dict, elem_id: str):
    return next(v for k, v in out.items() if getattr(k, "elem_id", None) == elem_id)


def test_errors_block_the_start_and_show_the_findings_with_their_fixes(app, started, tmp_path):
    folder = tmp_path / "my set"
    make_clean_dataset(folder, n=16)
    (folder / "photo 01.txt").unlink()   # an image without a caption: an error
    out, _ = start(app, preset_on(folder))
    assert not started
    assert "found 1 error(s); the run did not start" in message_of(out)
    assert "photo 01" in message_of(out)
    report = next(v for v in out.values() if isinstance(v, dict) and "findings" in v)   # the Dataset tab's report
    assert any(f["severity"] == "error" and f.get("fix") for f in report["findings"])   # drawn with its fix button
    assert "Start is waiting for these fixes" in str(by_id(out, "dataset-fix-note"))


def test_warnings_ask_once_then_start_anyway_starts_and_the_same_warnings_do_not_ask_again(app, started, tmp_path):
    folder = tmp_path / "small set"
    make_clean_dataset(folder, n=6)     # under 15 images: a warning, not an error
    preset = preset_on(folder)
    out, state = start(app, preset)
    assert not started and "warning(s)" in message_of(out) and "Start anyway" in message_of(out)
    assert by_id(out, "run-start-anyway")["visible"] is True
    out, _ = start(app, preset, "start_run_anyway")
    assert len(started) == 1 and by_id(out, "run-start-anyway")["visible"] is False
    accepted = out[state]
    out, _ = start(app, preset, accepted=accepted)   # the same dataset, the same warnings: no second question
    assert len(started) == 2
    (folder / "photo 01.txt").write_text("a caption without the trigger", encoding="utf-8")   # a new warning
    out, _ = start(app, preset, accepted=accepted)
    assert len(started) == 2 and "Start anyway" in message_of(out)


def test_a_clean_dataset_starts_at_once(app, started, tmp_path):
    folder = tmp_path / "clean"
    make_clean_dataset(folder, n=16)
    out, _ = start(app, preset_on(folder))
    assert len(started) == 1, out


def test_a_dit_or_vae_run_skips_the_doctor(app, started, tmp_path):
    folder = tmp_path / "bare images"
    make_clean_dataset(folder, n=3)
    for caption in folder.glob("*.txt"):
        caption.unlink()   # no captions: an error for a LoRA, normal for a VAE
    data = preset_to_dict(preset_on(folder))
    data["training"]["mode"] = "vae"
    start(app, preset_from_dict(data))
    assert len(started) == 1


def restore(app, remember, draft) -> dict:
    fn = next(f for f in app.fns.values() if getattr(f.fn, "__name__", "") == "restore")   # the page load
    return fn.fn(remember, draft)


def status_of(out: dict) -> str:
    return next(str(v) for k, v in out.items() if getattr(k, "elem_id", None) == "preset-status")


def test_a_reload_shows_the_newest_of_draft_file_and_running_run(app, tmp_path, monkeypatch):
    form = app.easel_form
    saved = tmp_path / "mine.yaml"
    saved.write_text(dump_preset(Preset()), encoding="utf-8")
    # no edits since the save: the file
    out = restore(app, str(saved), None)
    assert "reopened" in status_of(out)
    # edits after the save (even invalid ones) come back, marked unsaved
    draft = {"path": str(saved), "t": time.time() + 5,
             "values": {"training.max_steps": 1500, "dataset.resolution_px": 7}}
    out = restore(app, str(saved), draft)
    assert out[form.widgets["training.max_steps"]]["value"] == 1500
    assert out[form.widgets["dataset.resolution_px"]]["value"] == 7
    assert "unsaved" in status_of(out) and "kept by this browser" in status_of(out)
    assert "has-problem" in out[form.widgets["dataset.resolution_px"]]["elem_classes"]
    # a run started after both: its preset, marked running
    run_dir = tmp_path / "runs" / "lora-run"
    run_dir.mkdir(parents=True)
    data = preset_to_dict(Preset())
    data["training"]["max_steps"] = 4321
    (run_dir / "preset.yaml").write_text(dump_preset(preset_from_dict(data)), encoding="utf-8")
    later = time.time() + 60
    import os
    os.utime(run_dir / "preset.yaml", (later, later))
    monkeypatch.setattr("ui.runner.active_run", lambda root: run_dir)
    out = restore(app, None, None)          # a new browser: nothing remembered
    assert out[form.widgets["training.max_steps"]]["value"] == 4321 and "running" in status_of(out)
    out = restore(app, str(saved), draft)   # the run is newer than the edits
    assert out[form.widgets["training.max_steps"]]["value"] == 4321
    assert "unsaved" in status_of(out) and "lora-run" in status_of(out)


def test_edits_are_kept_as_a_draft_and_a_save_clears_it(app):
    form = app.easel_form
    fn = fn_of(app, "form_edited")
    draft_state = next(o for o in fn.outputs if isinstance(o, gr.BrowserState))
    baseline = next(c for c in fn.inputs if isinstance(c, gr.State) and isinstance(c.value, str))
    path = next(c for c in fn.inputs if isinstance(c, gr.State) and c is not baseline)
    values = {**form.updates_from_preset(Preset()), baseline: dump_preset(Preset()), path: None}
    values[form.widgets["training.max_steps"]] = 777
    out = fn.fn(dict(values))
    assert out[draft_state]["values"]["training.max_steps"] == 777
    values[form.widgets["training.max_steps"]] = Preset().training.max_steps   # back to the saved value
    assert fn.fn(dict(values))[draft_state] is None


def test_a_remembered_file_that_no_longer_loads_gives_the_defaults_not_an_error(app, tmp_path, monkeypatch):
    broken = tmp_path / "edited by hand.yaml"
    broken.write_text("training: {max_steps: lots}\n", encoding="utf-8")
    monkeypatch.setattr("ui.runner.active_run", lambda root: None)
    out = restore(app, str(broken), None)
    assert "defaults" in status_of(out)
    assert out[app.easel_form.widgets["training.max_steps"]]["value"] == Preset().training.max_steps
