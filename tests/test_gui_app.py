"""The GUI's handlers, called the way Gradio calls them (dict inputs keyed by component), plus one real
gradio_client round trip. Presets, validation next to fields, the LR plot, the dataset doctor, caption edits."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

gr = pytest.importorskip("gradio")

from engine.config.load import load_preset, preset_from_dict
from engine.config.save import dump_preset, preset_to_dict
from engine.config.schema import Preset
from tests.dataset_factory import make_clean_dataset
from ui.app import AppContext, build_app
from ui.presets import PresetLibrary

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "presets"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gui app ü")
    shipped = tmp / "shipped"
    shutil.copytree(SHIPPED, shipped)
    ctx = AppContext(runs_root=tmp / "runs", demo_dir=tmp / "demo", use_preset_output_dir=False,
                     library=PresetLibrary(shipped_dir=shipped, user_dir=tmp / "my presets"))
    return build_app(ctx)


def handler(app, api_name: str):
    return next(f.fn for f in app.fns.values() if f.api_name == api_name)


def form_values(app, preset: Preset, extra: dict | None = None) -> dict:
    """What Gradio passes a dict-input handler: {component: value} for the form showing `preset`, plus extra."""
    return {**app.easel_form.updates_from_preset(preset), **(extra or {})}


def widget_value(update):
    return update["value"] if isinstance(update, dict) else update


def text_of(result, component) -> str:
    return str(widget_value(result.get(component, "")))


def test_load_a_shipped_preset_fills_every_widget(app):
    form, path = app.easel_form, str(app.easel_ctx.library.shipped_dir / "sd15-lora.yaml")
    out = handler(app, "load_preset")(path)
    preset = load_preset(path)
    for key, widget in form.widgets.items():
        assert widget_value(out[widget]) == form.updates_from_preset(preset)[widget], key
    assert "**sd15-lora.yaml**" in _status(out) and 'class="clean">saved' in _status(out)


def test_edits_are_validated_next_to_their_fields_and_mark_the_preset_unsaved(app):
    form = app.easel_form
    wiring_edit = handler(app, "form_edited")
    base = Preset()
    baseline_state, path_state = _bar_states(app)
    values = form_values(app, base, {baseline_state: dump_preset(base), path_state: None})
    out = wiring_edit(dict(values))
    assert "**New preset**" in _status(out) and "not saved yet" in _status(out)  # not "new preset — saved"
    assert "unsaved" not in _status(out)
    values[form.widgets["dataset.resolution_px"]] = 20  # below the 32 px minimum
    values[form.widgets["model.family"]] = "sdxl"
    out = wiring_edit(dict(values))
    assert "unsaved" in _status(out) and "1 problem" in _status(out)
    info = out[form.widgets["dataset.resolution_px"]]["info"]
    # the problem in words, the key only as the code tag at the end
    assert info.startswith("⚠ 20 is out of range") and info.endswith("`dataset.resolution_px`")
    assert out[form.widgets["model.family"]]["info"].startswith("Model family")


def _bar_states(app):
    """The preset bar's baseline (saved YAML) and path states, found from the edit handler's inputs."""
    fn = next(f for f in app.fns.values() if f.api_name == "form_edited")
    states = [c for c in fn.inputs if isinstance(c, gr.State)]
    baseline = next(s for s in states if isinstance(s.value, str) and "version:" in s.value)
    return baseline, next(s for s in states if s is not baseline)


def _status(out) -> str:
    """The preset bar's status line: file name, saved / unsaved marker, problem count."""
    return next(v for v in out.values() if isinstance(v, str) and 'class="' in v and " — " in v)


def test_save_refuses_shipped_presets_and_save_as_round_trips(app):
    form, lib = app.easel_form, app.easel_ctx.library
    shipped = str(lib.shipped_dir / "sdxl-lora.yaml")
    preset = load_preset(shipped)
    data = preset_to_dict(preset)
    data["training"]["max_steps"] = 321
    data["sampling"]["prompts"] = ["ohwx, portrait of Zoë", "ohwx 日本"]
    edited = preset_from_dict(data)
    _, path_state = _bar_states(app)
    name_box = next(c for c in next(f for f in app.fns.values() if f.api_name == "save_preset_as").inputs
                    if c.elem_id == "preset-name")
    out = handler(app, "save_preset")(form_values(app, edited, {path_state: shipped}))
    assert any("shipped preset" in str(v) and "Save as" in str(v) for v in out.values())
    assert load_preset(shipped).training.max_steps == preset.training.max_steps  # untouched

    out = handler(app, "save_preset_as")(form_values(app, edited, {path_state: shipped, name_box: "Zoë's sdxl"}))
    saved = lib.user_dir / "Zoë's sdxl.yaml"
    assert saved.is_file() and load_preset(saved) == edited
    assert "**Zoë's sdxl.yaml**" in _status(out) and 'class="clean">saved' in _status(out)
    assert ("Zoë's sdxl (mine)", str(saved)) in lib.choices()
    reloaded = handler(app, "load_preset")(str(saved))
    assert widget_value(reloaded[form.widgets["training.max_steps"]]) == 321
    assert widget_value(reloaded[form.widgets["sampling.prompts"]]) == "ohwx, portrait of Zoë\nohwx 日本"

    # Save as never replaces an existing file; Save (to the loaded user preset) does
    data["training"]["max_steps"] = 654
    again = preset_from_dict(data)
    out = handler(app, "save_preset_as")(form_values(app, again, {path_state: str(saved), name_box: "Zoë's sdxl"}))
    assert any("my presets/Zoë's sdxl.yaml exists: choose another name, or load it and press Save" in str(v)
               for v in out.values())
    assert load_preset(saved).training.max_steps == 321
    handler(app, "save_preset")(form_values(app, again, {path_state: str(saved)}))
    assert load_preset(saved).training.max_steps == 654


def test_a_broken_preset_file_is_reported_and_the_form_kept(app, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {family: sdx}\ntraining: {max_stepz: 5}\n", encoding="utf-8")
    out = handler(app, "load_preset")(str(bad))
    text = " ".join(str(v) for v in out.values())
    assert "form is unchanged" in text and "did you mean 'sdxl'" in text and "training.max_stepz" in text
    assert not any(w in out for w in app.easel_form.widgets.values())


def test_start_with_problems_starts_nothing(app):
    form = app.easel_form
    values = form_values(app, Preset())
    values[form.widgets["training.max_steps"]] = 0  # with max_epochs 0: the run would have no length
    out = handler(app, "start_run")(values)
    assert "Fix these before starting" in " ".join(str(v) for v in out.values())
    assert out[form.widgets["training.max_steps"]]["info"].startswith("⚠ set “Max steps” or “Max epochs”")
    assert not list(app.easel_ctx.runs_root.glob("*/preset.yaml"))


def test_lr_plot_follows_the_schedule(app):
    data = preset_to_dict(Preset())
    data["training"]["max_steps"] = 200
    data["schedules"]["unet"] = {"type": "cosine", "warmup_steps": 20}
    frame_update, note = handler(app, "lr_plot")(form_values(app, preset_from_dict(data))).values()
    frame = widget_value(frame_update).dropna()   # without the NaN anchors that keep every component's colour
    assert frame["step"].max() == 200 and set(frame["component"]) == {"unet"}
    lrs = frame.set_index("step")["lr"]
    assert lrs[1] == 0.0 and lrs[21] == pytest.approx(1e-4, rel=1e-3) and lrs[200] < 1e-6
    assert "200 steps" in note


def test_dataset_check_gallery_caption_edit_and_undo(app, tmp_path):
    form = app.easel_form
    root = tmp_path / "my set ü"
    images = make_clean_dataset(root, n=6)
    check = handler(app, "check_dataset")
    values = {form.widgets["dataset.path"]: str(root), form.widgets["dataset.trigger"]: "ohwx",
              form.widgets["dataset.resolution_px"]: 512, form.widgets["dataset.caption_ext"]: ".txt",
              form.widgets["training.batch_size"]: 1}
    summary, report, gallery, _ = check(dict(values))
    assert "6 images" in summary and report["counts"]["error"] == 0
    assert any(f["code"] == "too_few_images" for f in report["findings"])
    assert len(gallery) == 6 and all(Path(thumb).is_file() for thumb, _ in gallery)
    first = Path(report["root"]) / report["images"][0]["path"]
    caption_file = first.with_suffix(".txt")
    old = caption_file.read_text(encoding="utf-8")

    fn = next(f for f in app.fns.values() if f.api_name == "save_caption")
    chosen, caption_box, report_state = _caption_inputs(fn)
    out = fn.fn({**values, chosen: report["images"][0]["path"], caption_box: "ohwx, a new caption",
                 report_state: report})
    assert caption_file.read_text(encoding="utf-8") == "ohwx, a new caption" and "backed up" in out[3]
    out = handler(app, "undo_dataset")(dict(values))
    assert caption_file.read_text(encoding="utf-8") == old and "Undone" in out[3]
    assert all(Path(p).exists() for p in images)  # nothing lost


def _caption_inputs(fn):
    chosen = next(c for c in fn.inputs if c.elem_id == "dataset-chosen")
    caption = next(c for c in fn.inputs if c.elem_id == "dataset-caption")
    report = next(c for c in fn.inputs if isinstance(c, gr.State))
    return chosen, caption, report


def test_bulk_caption_edit_preview_apply_undo(app, tmp_path):
    form = app.easel_form
    root = tmp_path / "set"
    make_clean_dataset(root, n=3, trigger="")
    fn = next(f for f in app.fns.values() if f.api_name == "preview_caption_edit")
    by_id = {c.elem_id: c for c in fn.inputs}
    regex = next(c for c in fn.inputs if isinstance(c, gr.Checkbox))
    values = {form.widgets["dataset.path"]: str(root), form.widgets["dataset.trigger"]: "ohwx",
              by_id["caption-op"]: "add_trigger", by_id["caption-text"]: "", by_id["caption-find"]: "",
              by_id["caption-replace"]: "", regex: False}
    before = {p: p.read_text(encoding="utf-8") for p in root.glob("*.txt")}
    message, diff = fn.fn(dict(values))
    assert message.startswith("3 caption(s) would change") and "+ohwx, " in diff
    assert {p: p.read_text(encoding="utf-8") for p in root.glob("*.txt")} == before
    message, _ = handler(app, "apply_caption_edit")(dict(values))
    assert "Changed 3" in message
    assert all(p.read_text(encoding="utf-8").startswith("ohwx, ") for p in root.glob("*.txt"))
    message, _ = handler(app, "undo_caption_edit")(str(root))
    assert "Undone" in message and {p: p.read_text(encoding="utf-8") for p in root.glob("*.txt")} == before
    values[by_id["caption-op"]] = "replace"
    values[by_id["caption-find"]] = "(unclosed"
    values[regex] = True
    message, _ = fn.fn(dict(values))
    assert message.startswith("**Find is not a valid regular expression:**") and "unterminated" in message


def test_gradio_client_loads_a_preset(app):
    client_mod = pytest.importorskip("gradio_client")
    from ui.app import CSS
    app.queue()
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True,
                           allowed_paths=app.easel_ctx.allowed_paths, css=CSS)
    try:
        client = client_mod.Client(url, verbose=False)
        result = client.predict(str(app.easel_ctx.library.shipped_dir / "flux-identity-fast.yaml"),
                                api_name="/load_preset")
        flat = [r for r in result if isinstance(r, str)]
        yaml_view = next(r for r in flat if r.startswith("version: 1"))
        assert yaml.safe_load(yaml_view)["model"]["family"] == "flux"
    finally:
        app.close()


def test_dataset_fix_button_creates_missing_captions_and_undo_removes_them(app, tmp_path):
    from ui.tab_dataset import apply_fix, fix_label
    form = app.easel_form
    root = tmp_path / "set"
    make_clean_dataset(root, n=4)
    orphan = next(root.glob("*.txt"))
    orphan.unlink()  # one image without its caption
    values = {form.widgets["dataset.path"]: str(root), form.widgets["dataset.trigger"]: "ohwx",
              form.widgets["dataset.resolution_px"]: 512, form.widgets["dataset.caption_ext"]: ".txt",
              form.widgets["training.batch_size"]: 1}
    _, report, _, _ = handler(app, "check_dataset")(dict(values))
    finding = next(f for f in report["findings"] if f["code"] == "missing_caption")
    assert finding["severity"] == "error" and fix_label(finding["fix"], 1) == "Create 1 caption(s) from the trigger"
    summary, report, _, note = apply_fix(form, dict(values), finding)
    assert orphan.read_text(encoding="utf-8").strip() == "ohwx" and "Done" in note
    assert not any(f["code"] == "missing_caption" for f in report["findings"]) and "0 errors" in summary
    handler(app, "undo_dataset")(dict(values))
    assert not orphan.exists()


def test_captioning_runs_the_engine_and_reports_a_missing_model_in_words(app, tmp_path):
    """`python -m engine caption` really runs (offline, no model on disk): the GUI shows its error and hint."""
    import time
    from ui.tab_caption import start_captioning
    from ui.tab_run import check_process
    root = tmp_path / "set"
    make_clean_dataset(root, n=2)
    view = start_captioning(root, str(tmp_path / "no such model"), "missing", "ohwx", tmp_path / "captioning")
    deadline = time.time() + 180
    while not view.finished and time.time() < deadline:
        time.sleep(0.5)
        view.poll()
        check_process(view)
    assert view.finished == "error", view.log
    assert "no such model" in view.error["message"] and view.error.get("hint")


def test_start_checks_folders_before_making_a_run_folder(app, tmp_path):
    form = app.easel_form
    data = preset_to_dict(Preset())
    data["dataset"]["path"] = str(tmp_path / "not here")
    data["model"]["path"] = "C:/models/missing.safetensors"
    out = handler(app, "start_run")(form_values(app, preset_from_dict(data)))
    assert out[form.widgets["dataset.path"]]["info"].startswith("⚠ folder not found")
    assert "neither a file, a folder nor a Hub id" in out[form.widgets["model.path"]]["info"]
    assert not list(app.easel_ctx.runs_root.glob("*/preset.yaml"))
    from ui.tab_run import preflight
    data["dataset"]["path"], data["model"]["path"] = str(tmp_path), "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert preflight(preset_from_dict(data)) == []


def test_the_rl_tabs_score_button_scores_the_dataset_and_names_a_server_that_is_down(app, tmp_path):
    import dataclasses

    from engine.demo import make_dataset

    data = make_dataset(tmp_path / "shapes")
    rl = dataclasses.replace(Preset().rl, rewards={"brightness": 1.0, "jpeg_compressibility": 0.1})
    preset = dataclasses.replace(Preset(), dataset=dataclasses.replace(Preset().dataset, path=str(data)), rl=rl)
    fn = next(f for f in app.fns.values() if f.api_name == "score_rewards")
    source = next(c for c in fn.inputs if getattr(c, "elem_id", None) == "rl-score-source")
    view = next(c for c in fn.inputs if c not in app.easel_form.inputs() and c is not source)
    out = fn.fn(form_values(app, preset, {source: "the dataset", view: None}))
    text = " ".join(str(v) for v in out.values())
    assert "Scored 16 image(s) with brightness × 1, jpeg_compressibility × 0.1" in text
    table = next(v for v in out.values() if isinstance(v, dict) and v.get("visible"))["value"]
    assert list(table.columns) == ["image", "prompt", "total", "brightness", "jpeg_compressibility"]
    assert len(table) == 16 and table["brightness"].between(0, 1).all()
    down = dataclasses.replace(preset, rl=dataclasses.replace(rl, rewards={"server": 1.0}, reward_server_retries=1,
                                                              reward_server_url="http://127.0.0.1:9/reward"))
    out = fn.fn(form_values(app, down, {source: "the dataset", view: None}))
    assert "does not answer" in " ".join(str(v) for v in out.values()) and "127.0.0.1:9" in str(out)
    out = fn.fn(form_values(app, preset, {source: "the last run's samples", view: None}))
    assert "No run yet" in str(out)
