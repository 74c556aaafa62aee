"""Optimizer & LR tab: an optimizer and a learning-rate schedule per component, and a live LR plot."""
from __future__ import annotations

import gradio as gr

from engine.config.optim_specs import OPTIMIZER_PARAMS, SCHEDULE_PARAMS
from engine.config.schema import COMPONENTS
from ui.fields import Form, to_widget

COMPONENT_TITLES = {"unet": "UNet / transformer", "text_encoder": "Text encoder(s)", "vae": "VAE",
                    "discriminator": "Discriminator"}
COMPONENT_NOTES = {"text_encoder": "Used only when **Train text encoder** is on (Training tab). An empty learning "
                                   "rate means the Text-encoder LR ratio × the UNet's.",
                   "vae": "Used only when training.mode is **vae**.",
                   "discriminator": "Used only in training.mode **vae** with **gan** on."}


def params_help(table: dict, kind: str) -> str:
    """Markdown: the parameters the chosen optimizer or schedule accepts, with defaults."""
    specs = table.get(kind, {})
    if not specs:
        return f"*{kind} takes no extra parameters.*"
    return "\n".join(f"- `{name}` (default `{spec[0]}`): {spec[2]}" for name, spec in specs.items())


def default_params(table: dict, kind: str) -> dict:
    return {name: spec[0] for name, spec in table.get(kind, {}).items()}


def build(form: Form) -> dict:
    helps = {}
    with gr.Row(equal_height=False):
        for comp in COMPONENTS:
            with gr.Column():
                gr.Markdown(f"### {COMPONENT_TITLES[comp]}")
                if comp in COMPONENT_NOTES:
                    gr.Markdown(COMPONENT_NOTES[comp])
                form.grid([f"optimizers.{comp}.type", f"optimizers.{comp}.lr"])
                form.widget(f"optimizers.{comp}.params")
                helps[("optimizers", comp)] = gr.Markdown(params_help(OPTIMIZER_PARAMS, "adamw"))
                form.grid([f"schedules.{comp}.type", f"schedules.{comp}.warmup_steps",
                           f"schedules.{comp}.lr_decay_steps"])
                form.widget(f"schedules.{comp}.params")
                helps[("schedules", comp)] = gr.Markdown(params_help(SCHEDULE_PARAMS, "constant_with_warmup"))
    gr.Markdown("### Learning rate over the run")
    plot = gr.LinePlot(x="step", y="lr", color="component", height=300, elem_id="lr-plot",
                       x_title="step", y_title="learning rate")
    plot_note = gr.Markdown(elem_id="lr-plot-note")
    return {"helps": helps, "plot": plot, "plot_note": plot_note}


def wire(form: Form, parts: dict) -> None:
    """Choosing another type fills in that type's parameters (the old ones would not fit it)."""
    for (section, comp), help_md in parts["helps"].items():
        table = OPTIMIZER_PARAMS if section == "optimizers" else SCHEDULE_PARAMS
        type_w, params_w = form.widgets[f"{section}.{comp}.type"], form.widgets[f"{section}.{comp}.params"]
        spec = form.specs[f"{section}.{comp}.params"]

        def on_type(kind, table=table, spec=spec):
            return to_widget(spec, default_params(table, kind)), params_help(table, kind)

        event = type_w.input(on_type, inputs=type_w, outputs=[params_w, help_md], show_progress="hidden")
        if "redraw" in parts:  # the new type's parameters are in place only now
            event.then(parts["redraw"], inputs=form.inputs(), outputs=[parts["plot"], parts["plot_note"]],
                       show_progress="hidden")


def help_updates(preset) -> dict:
    """(section, comp) -> help markdown for the preset's types (after a load)."""
    out = {}
    for comp in COMPONENTS:
        out[("optimizers", comp)] = params_help(OPTIMIZER_PARAMS, preset.optimizers[comp].type)
        out[("schedules", comp)] = params_help(SCHEDULE_PARAMS, preset.schedules[comp].type)
    return out


MAX_PLOT_POINTS = 400  # a 10,000-step run is drawn from 400 evenly spaced steps (the last step always included)


def lr_frame(preset):
    """(DataFrame step/lr/component, note) from engine/lr_preview.py: torch-free, the trainer's own formulas."""
    import pandas as pd
    from engine.config.load import ConfigError
    from engine.lr_preview import lr_curves, lr_marks

    try:
        curves = lr_curves(preset)
    except ConfigError as exc:
        return None, "; ".join(f"{k}: {m}" for k, m in exc.problems)
    total = max((len(c) for c in curves.values()), default=0)
    if not total:
        return None, "Nothing to draw: no component trains with a fixed learning rate."
    stride = max(1, total // MAX_PLOT_POINTS)
    picks = sorted(set(range(0, total, stride)) | {total - 1})
    rows = ANCHORS + [(i + 1, float(curve[i]), comp) for comp, curve in curves.items() for i in picks]
    marks = lr_marks(preset, total)
    notes = [f"{comp}: peak {max(c):.2e}, last {c[-1]:.2e}" + (" (a learning rate of 0 trains nothing)"
                                                               if max(c) == 0 else "") for comp, c in curves.items()]
    if marks.get("sample"):
        notes.append(f"samples at {_steps_text(marks['sample'])}")
    if marks.get("checkpoint"):
        notes.append(f"checkpoints at {_steps_text(marks['checkpoint'])}")
    return pd.DataFrame(rows, columns=["step", "lr", "component"]), f"{total} steps · " + " · ".join(notes)


# One point with no value (NaN, not drawn) per component, first in every frame: Gradio's LinePlot fixes its series
# at the first data it draws and drops components that appear later (the text encoder, once it trains), and it
# draws nothing at all after an empty frame (see ui/tab_run.py loss_frame).
ANCHORS = [(1, float("nan"), comp) for comp in COMPONENTS]


def empty_frame():
    """No curve (an invalid field must not leave the last good curve, or a flat line, on screen)."""
    import pandas as pd

    steps, lrs, comps = zip(*ANCHORS)
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "lr": pd.Series(lrs, dtype="float64"),
                         "component": pd.Series(comps, dtype="object")})


def invalid_note(problems: list[tuple[str, str]], form: Form) -> str:
    """Why no curve is drawn: an invalid learning rate said as such, other fields by their labels."""
    from ui.fields import format_problems

    lr = [(k, m) for k, m in problems if k.endswith(".lr")]
    if lr:
        return "**Invalid learning rate**, so no curve:\n" + format_problems(lr, form)
    return "**No curve until these fields are valid:**\n" + format_problems(problems, form)


def _steps_text(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:6])) + (f" … ({len(steps)} in all)" if len(steps) > 6 else "")


def wire_plot(form: Form, parts: dict, triggers: list) -> None:
    """Redraw the LR curve whenever a field that shapes it changes (and once at page load)."""
    from engine.config.load import ConfigError

    def redraw(values):
        try:
            preset = form.to_preset(values)
        except ConfigError as exc:
            return {parts["plot"]: empty_frame(), parts["plot_note"]: invalid_note(exc.problems, form)}
        frame, note = lr_frame(preset)
        return {parts["plot"]: empty_frame() if frame is None else frame, parts["plot_note"]: note}

    parts["redraw"] = redraw
    # .input (a person's edit), not .change: loading a preset changes 80 widgets one by one, and a redraw between
    # two of them would see a half-loaded form. Loads redraw once at their end (ui/app.py: after_load).
    gr.on(triggers=[w.input for w in triggers], fn=redraw, inputs=form.inputs(),
          outputs=[parts["plot"], parts["plot_note"]], show_progress="hidden", trigger_mode="always_last",
          api_name="lr_plot")
