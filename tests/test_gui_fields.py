"""ui/fields.py: every preset key has exactly one widget, and form -> preset -> YAML -> preset -> form is lossless."""
from __future__ import annotations

import pytest
import yaml

gr = pytest.importorskip("gradio")

from engine.config.fields import get_value, iter_fields
from engine.config.load import ConfigError, preset_from_dict
from engine.config.optim_specs import OPTIMIZER_PARAMS, SCHEDULE_PARAMS
from engine.config.save import dump_preset, preset_to_dict
from engine.config.schema import Preset
from engine.models.families import FOLDERS
from ui.fields import Form, UNBOUND, to_widget


@pytest.fixture(scope="module")
def form():
    with gr.Blocks():
        f = Form()
        for section in ("model", "dataset", "network", "training", "optimizers", "schedules", "vae", "rl", "sampling", "validation",
                        "output"):
            f.section(section)
    return f


def wire(component, value):
    """What the browser sends back for a value the server showed: Gradio's own postprocess + preprocess."""
    shown = component.postprocess(value)
    if hasattr(shown, "model_dump"):
        shown = shown.model_dump()
    return component.preprocess(shown)


def form_values(form: Form, preset: Preset, key=None, widget_value=None) -> dict:
    values = {w: wire(w, v) for w, v in form.updates_from_preset(preset).items()}
    if key is not None:
        values[form.widgets[key]] = wire(form.widgets[key], widget_value)
    return values


def _numbers(spec):
    lo, hi, d = spec.meta.get("min"), spec.meta.get("max"), spec.default
    base = d if d is not None else 0.0
    raw = [base * 2, base + 64, base + 1, base - 1, 0.37, 2e-5, lo, hi] if spec.kind != "int" else \
        [base * 2, base + 64, base + 1, base - 1, lo, hi]
    for v in raw:
        if v is None or v == d or (lo is not None and v < lo) or (hi is not None and v > hi):
            continue
        yield int(v) if spec.kind == "int" else float(v)


def candidates(spec):
    """Non-default values for one key, most ordinary first; the test takes the first that validates alone."""
    if spec.kind == "bool":
        yield not spec.default
    elif spec.kind == "choice":
        yield from (c for c in spec.meta["choices"] if c != spec.default)
    elif spec.kind == "multi_choice":
        yield from (v for v in (["diffusers"], ["kohya", "diffusers"]) if v != spec.default)
    elif spec.kind in ("int", "float", "optional_float"):
        yield from _numbers(spec)
    elif spec.kind == "lines":
        yield ["ohwx, a photo of a café in Zürich", "日本語 prompt with  two spaces"]
    elif spec.kind == "numbers":
        yield [0.5, 1.25]
    elif spec.kind == "str":
        yield "C:/Users/Zoë/My Datasets/ohwx ä 日本" if "path" in spec.key else "ohwx ä"


# Keys whose non-default value needs another key set too (the preset's cross-field rules).
FLUX = {"model.family": "flux", "dataset.resolution_px": 512, "dataset.bucket_step_px": 64}
ZIMAGE = {"model.family": "zimage", "dataset.resolution_px": 512, "dataset.bucket_step_px": 64}
DIT = {"model.family": "dit", "network.type": "full"}  # flow paths are for models trained from scratch
COMPANIONS = {"training.flow_path": DIT, "dataset.use_reg": {"dataset.reg_path": "reg images"},
              "network.te_two_phase": {"network.train_text_encoder": True},
              "model.clip_l_path": FLUX, "model.t5_path": FLUX, "model.block_swap": FLUX,
              "model.text_encoder_path": ZIMAGE, "model.preview_path": ZIMAGE}


def mapping_case(key: str):
    """params need a type that has them: (changes to apply first, non-default params)."""
    if key == "rl.rewards":  # reward name -> weight
        return {}, {"brightness": 0.5, "server": 2.0}
    section, comp, _ = key.split(".")
    if section == "optimizers":
        kind, table = "sgd", OPTIMIZER_PARAMS
        params = {"momentum": 0.9, "nesterov": True, "weight_decay": 0.001, "dampening": 0.0}
    else:
        kind, table = "cosine", SCHEDULE_PARAMS
        params = {"num_cycles": 1.5}
    assert set(params) == set(table[kind])
    return {f"{section}.{comp}.type": kind}, params


def _set(data: dict, changes: dict) -> dict:
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    return data


def test_every_key_is_bound_once(form):
    keys = [k for k, _ in iter_fields() if k not in UNBOUND]
    assert sorted(form.widgets) == sorted(keys)
    assert len(set(map(id, form.widgets.values()))) == len(keys)
    with pytest.raises(ValueError, match="already bound"):
        form.widget("training.max_steps")


def test_widgets_carry_the_schema_metadata(form):
    steps = form.widgets["training.max_steps"]
    assert steps.precision == 0 and steps.label == "Max steps"
    assert "Range 1–1000." in form.widgets["dataset.repeats"].info
    assert "Optimizer steps to train" in steps.info and "training.max_steps" in steps.info
    assert form.specs["dataset.resolution_px"].label == "Resolution (px)"
    assert form.specs["optimizers.unet.lr"].label == "Learning rate"
    family = form.widgets["model.family"]
    names = [c[0] for c in family.choices]
    assert isinstance(family, gr.Dropdown) and names == list(FOLDERS)   # the registry's families, in its order
    assert {"sd15", "sd2", "sdxl", "flux", "zimage", "chroma", "dit"} <= set(names)
    assert isinstance(form.widgets["training.ema.enabled"], gr.Checkbox)
    assert form.widgets["output.formats"].multiselect
    assert "dataset.flip" in form.accordion_of and "dataset.resolution_px" not in form.accordion_of


@pytest.mark.parametrize("key", [k for k, _ in iter_fields() if k not in UNBOUND])
def test_form_yaml_form_round_trip_per_field(form, key):
    spec = form.specs[key]
    base = Preset()
    if key == "rl.rewards":
        tried = [mapping_case(key)[1]]
    elif spec.kind == "mapping":
        changes, value = mapping_case(key)
        data = preset_to_dict(base)
        section, comp, _ = key.split(".")
        data[section][comp] = {"type": changes[f"{section}.{comp}.type"], **({"lr": 1e-4} if section ==
                                                                             "optimizers" else {})}
        base = preset_from_dict(data)
        value = {**get_value(base, key), **value}
        tried = [value]
    else:
        tried = list(candidates(spec))
        if key in COMPANIONS:
            base = preset_from_dict(_set(preset_to_dict(base), COMPANIONS[key]))
    for value in tried:
        values = form_values(form, base, key, to_widget(spec, value))
        try:
            preset = form.to_preset(values)
        except ConfigError:
            continue
        break
    else:
        pytest.fail(f"no non-default value of {key} validates on its own: tried {tried}")
    assert get_value(preset, key) == value and value != get_value(Preset(), key)
    text = dump_preset(preset)
    again = preset_from_dict(yaml.safe_load(text))
    assert again == preset
    back = form_values(form, again)
    assert back == values, f"{key}: form differs after the YAML round trip"


def test_bad_form_values_name_their_key(form):
    values = form_values(form, Preset(), "dataset.resolution_px", 20)
    values[form.widgets["sampling.strengths"]] = "0.5, lots"
    values[form.widgets["optimizers.unet.params"]] = "betas: [0.9, 0.99]\nbetaz: 1"
    with pytest.raises(ConfigError) as err:
        form.to_preset(values)
    keys = {k for k, _ in err.value.problems}
    assert {"dataset.resolution_px", "sampling.strengths[1]", "optimizers.unet.betaz"} <= keys
    assert {form.key_of_problem(k) for k in keys} == {"dataset.resolution_px", "sampling.strengths",
                                                      "optimizers.unet.params"}
    updates = form.problem_updates(err.value.problems)
    assert updates[form.widgets["dataset.resolution_px"]]["info"].startswith("⚠ 20 is out of range")
    assert "has-problem" in updates[form.widgets["optimizers.unet.params"]]["elem_classes"]
    assert updates[form.accordion_of["optimizers.unet.params"]] == gr.update(open=True)


def test_the_diffusers_format_says_who_loads_it(form):
    """For SD families a diffusers-format LoRA loads in diffusers only: the choice says so."""
    choices = dict((value, label) for label, value in form.widgets["output.formats"].choices)
    assert choices == {"kohya": "kohya (A1111 / Forge / ComfyUI)", "diffusers": "diffusers (for diffusers / Python)"}


def test_hints_name_other_fields_by_their_labels_and_keep_the_key_as_a_tag():
    from ui.fields import all_specs, format_problems, humanize

    specs = all_specs()
    unet_lr = specs["optimizers.unet.lr"]
    assert "te_lr_ratio" not in unet_lr.help and "“Text-encoder LR ratio”" in unet_lr.help
    assert unet_lr.info.endswith("`optimizers.unet.lr`") and "[optimizers.unet.lr]" not in unet_lr.info
    assert "random_crop" not in specs["training.cache_latents"].help
    # values and the guides' flag names stay as written; the key's own name too
    assert humanize("v_prediction models; the guide's log_interval", "training.objective") == \
        "v_prediction models; the guide's log_interval"
    form = Form()
    with gr.Blocks():
        form.section("training")
    listed = format_problems([("training.max_steps", "training.max_steps: must be >= 0")], form)
    assert listed == "- **Max steps** `training.max_steps`: must be >= 0"


def test_the_lr_preview_says_invalid_learning_rate_instead_of_a_flat_line():
    from engine.config.load import ConfigError
    from ui.tab_schedule import empty_frame, invalid_note

    form = Form()
    with gr.Blocks():
        form.section("optimizers")
    try:
        preset_from_dict({"version": 1, "optimizers": {"unet": {"lr": "-1"}}})
    except ConfigError as exc:
        note = invalid_note(exc.problems, form)
    assert note.startswith("**Invalid learning rate**") and "out of range" in note
    assert empty_frame()["lr"].isna().all()   # no curve drawn (the NaN anchors keep the series)


def test_a_trigger_missing_from_every_sample_prompt_is_advice_not_an_error():
    from engine.config.validate import advice

    data = {"version": 1, "dataset": {"trigger": "zqx"}, "sampling": {"prompts": ["easeldemo, a red circle"]}}
    notes = advice(preset_from_dict(data))   # valid: it loads
    assert [k for k, _ in notes] == ["sampling.prompts"] and "'zqx'" in notes[0][1]
    data["sampling"]["prompts"].append("a ZQX portrait")
    assert advice(preset_from_dict(data)) == []


# The fields only some families use (ui/family_fields.py, decided by each family's capabilities): who shows which.
SHOWN_BY_FAMILY = {
    "sd15": [], "sd2": [], "sdxl": [], "dit": [],
    "flux": ["model.clip_l_path", "model.t5_path", "model.block_swap"],
    "chroma": ["model.t5_path", "model.block_swap"],
    "zimage": ["model.text_encoder_path", "model.preview_path", "model.block_swap"],
    # FLUX.2 klein: its Qwen3 file, the distilled klein for previews, block swap (no CLIP-L, no T5)
    "flux2": ["model.text_encoder_path", "model.preview_path", "model.block_swap"],
}


@pytest.mark.parametrize("family", sorted(SHOWN_BY_FAMILY))
def test_each_family_shows_the_fields_it_uses(family):
    from ui import family_fields

    assert family_fields.shown_keys(family) == SHOWN_BY_FAMILY[family]


def test_every_registered_family_is_in_the_table():
    assert set(SHOWN_BY_FAMILY) == set(FOLDERS)


def test_a_shown_field_validates_for_its_family_and_a_hidden_one_is_refused_there():
    """What the form shows and what the loader accepts agree: a gated key set for a family that hides it is an
    error named at that key (engine/config/validate.py)."""
    from ui import family_fields

    values = {"model.clip_l_path": "clip_l.safetensors", "model.t5_path": "t5xxl.safetensors",
              "model.text_encoder_path": "qwen_3_4b.safetensors", "model.preview_path": "Tongyi-MAI/Z-Image-Turbo",
              "model.block_swap": 4}
    for family in SHOWN_BY_FAMILY:
        for key, value in values.items():
            data = _set(preset_to_dict(Preset()), {"model.family": family, "dataset.resolution_px": 512,
                                                   "dataset.bucket_step_px": 64, "network.type": "full", key: value})
            try:
                preset_from_dict(data)
                problems = []
            except ConfigError as err:
                problems = [k for k, _ in err.problems]
            assert (key not in problems) == family_fields.uses(family, key), (family, key, problems)


def test_the_training_tab_shows_and_hides_the_gated_fields_with_the_family():
    from ui import family_fields, tab_training

    with gr.Blocks() as blocks:
        form = Form()
        parts = tab_training.build(form)
    fields = parts["family_fields"]
    containers = fields["shown_by"]   # key -> its column (or, bound inside a section's grid, its widget)
    assert set(containers) == set(family_fields.USED_BY)
    follow = next(f for f in blocks.fns.values() if f.api_name == "family_fields")
    family = form.widgets["model.family"]
    assert {block_id for block_id, _ in follow.targets} == {family._id}   # a person's choice of family
    assert set(follow.outputs) == set(containers.values())
    assert not any(c.visible for c in containers.values())   # the default family, SD 1.x, uses none of them
    values = {w: to_widget(form.specs[k], form.specs[k].default) for k, w in form.widgets.items()}
    for name, keys in SHOWN_BY_FAMILY.items():
        out = fields["follow"]({**values, family: name})
        assert {k for k, c in containers.items() if out[c]["visible"]} == set(keys), name
    # a stray value stays in sight whatever the family, so its problem can be seen and cleared
    out = fields["follow"]({**values, family: "sdxl", form.widgets["model.t5_path"]: "t5xxl_fp16.safetensors"})
    assert out[containers["model.t5_path"]]["visible"] is True
    assert out[containers["model.clip_l_path"]]["visible"] is False
