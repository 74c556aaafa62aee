"""Fields that only some model families use, shown for those families alone: FLUX's CLIP-L file, the T5 file of
FLUX and Chroma, Z-Image's Qwen3 file and its Turbo preview, block swap. The family's Capabilities decide
(engine/models/families/<name>/caps.py), never its name, so a new family shows its fields by saying what it uses.

    with gr.Row():
        shown_by = family_fields.columns(form, ["model.clip_l_path", "model.vae_path"])   # one column per field
    shown_by = family_fields.containers(form, shown_by)   # + the gated keys bound elsewhere (their widget itself)
    updates = family_fields.updates(form, shown_by, values)   # {column or widget: gr.update(visible=...)}

A field that holds a value stays in sight whatever the family: a stray value is a problem to fix, and a hidden field
cannot be cleared.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr

from engine.models.families import Capabilities, capabilities
from ui.fields import Form, to_widget

FAMILY_KEY = "model.family"


def _separate_file(name: str) -> Callable[[Capabilities], bool]:
    return lambda caps: name in caps.separate_files


# preset key -> does a family with these capabilities use it (engine/config/validate.py refuses the same keys for
# the others)
USED_BY: dict[str, Callable[[Capabilities], bool]] = {
    "model.clip_l_path": _separate_file("clip_l_path"),
    "model.t5_path": _separate_file("t5_path"),
    "model.text_encoder_path": _separate_file("text_encoder_path"),
    "model.preview_path": lambda caps: bool(caps.preview_model),
    "model.block_swap": lambda caps: caps.block_swap,
}


def uses(family: str, key: str) -> bool:
    """Whether model.family `family` uses `key` (every key outside USED_BY is everyone's). An unknown family (a
    typo being fixed) uses none of the gated keys."""
    if key not in USED_BY:
        return True
    try:
        return USED_BY[key](capabilities(family))
    except Exception:  # noqa: BLE001 - the family's own problem is reported next to its field
        return False


def shown(form: Form, key: str, family: str, widget_value) -> bool:
    """In sight: the family uses it, or it holds something other than its default (None: an emptied box)."""
    spec = form.specs[key]
    return uses(family, key) or widget_value not in (None, to_widget(spec, spec.default))


def columns(form: Form, keys: list[str], min_width: int = 260) -> dict:
    """Bind each key in a column of its own in the current row; {gated key: its column}. Hiding a column hands its
    width to the others (a hidden widget alone would leave a gap)."""
    family = form.specs[FAMILY_KEY].default
    shown_by = {}
    for key in keys:
        start = shown(form, key, family, to_widget(form.specs[key], form.specs[key].default))
        with gr.Column(min_width=min_width, visible=start) as column:
            form.widget(key)
        if key in USED_BY:
            shown_by[key] = column
    return shown_by


def containers(form: Form, shown_by: dict) -> dict:
    """shown_by plus every gated key bound elsewhere (in a section's grid): its widget is what shows or hides."""
    family = form.specs[FAMILY_KEY].default
    out = dict(shown_by)
    for key in USED_BY:
        if key not in out and key in form.widgets:
            widget = form.widgets[key]
            widget.visible = shown(form, key, family, widget.value)
            out[key] = widget
    return out


def inputs(form: Form, shown_by: dict) -> set:
    """What `updates` reads: the family and the gated fields' values."""
    return {form.widgets[FAMILY_KEY], *(form.widgets[k] for k in shown_by)}


def updates(form: Form, shown_by: dict, values: dict) -> dict:
    """{column or widget: gr.update(visible=...)} for the family in `values` ({widget: value}, as Gradio passes)."""
    family = values.get(form.widgets[FAMILY_KEY], form.specs[FAMILY_KEY].default)
    return {container: gr.update(visible=shown(form, key, family, values.get(form.widgets[key])))
            for key, container in shown_by.items()}


def shown_keys(family: str) -> list[str]:
    """The gated keys model.family `family` shows (its fields beyond everyone's), in USED_BY's order."""
    return [key for key in USED_BY if uses(family, key)]


def wire(form: Form, shown_by: dict) -> dict:
    """A person's choice of family shows and hides the fields; loads chain `follow` (ui/app.py after_load), since a
    load sets the widgets one by one. {"follow": fn, "inputs": ..., "outputs": ..., "shown_by": {key: container}}."""
    def follow(values: dict) -> dict:
        return updates(form, shown_by, values)

    parts = {"follow": follow, "inputs": inputs(form, shown_by), "outputs": list(shown_by.values()),
             "shown_by": dict(shown_by)}
    form.widgets[FAMILY_KEY].input(follow, inputs=parts["inputs"], outputs=parts["outputs"], show_progress="hidden",
                                   api_name="family_fields")
    return parts
