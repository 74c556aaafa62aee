"""Will it fit? A gauge of the predicted peak VRAM against a card, and the family's VRAM tiers that set the memory keys.

    parts = fit_gauge.build(form)             # the tier picker, "Apply tier settings", the gauge (Training tab)
    fit_gauge.wire(form, parts)               # redraws on every edit of a key in GAUGE_KEYS and on a tier change
    html = fit_gauge.gauge_html(preset, 16.0) # "≈ 14.8 GB of 16 GB", the parts, and when over, the ways to fit

The numbers are engine/models/fit/'s (torch-free: safetensors headers, or the real models' sizes for a Hub id).
The tiers are presets/<family>[-<variant>]-lora-<N>gb.yaml (flux-lora-24gb.yaml is FLUX's "24 GB" tier,
flux2-klein9b-lora-16gb.yaml FLUX.2 klein 9B's "9B · 16 GB"): the files are the one table of their settings. The
picker offers the tiers of the form's family; Apply takes those of the model's size (ui/fit_tiers.py variant_for:
model.path's name); a family without tier files is compared with the card sizes the tiers of the others are made for,
and has nothing to apply.
"""
from __future__ import annotations

import functools
import html
import re
from dataclasses import replace

import gradio as gr

from engine.config.load import ConfigError
from engine.models.families import FOLDERS, capabilities, memory_model
from engine.models.fit import advice, estimate, fit_settings, local_path, model_sizes
from ui import fit_tiers
from ui.fields import Form

FAMILY_KEY, PATH_KEY = "model.family", "model.path"
CARD = re.compile(r"(?:^|\s)(\d+(?:\.\d+)?) GB$")   # a picker choice other than THIS_GPU: "12 GB", "9B · 16 GB"
THIS_GPU = "this GPU"


def file_keys(family: str) -> tuple[str, ...]:
    """The model.* keys of the files model_sizes reads for `family`: the base model, the config folder, a separate
    VAE (any family may name one) and the separate files its capabilities list (FLUX: clip_l_path, t5_path)."""
    separate = capabilities(family).separate_files
    return tuple(dict.fromkeys(("path", "single_file_config", "vae_path", *separate)))


# The keys fit_settings and model_sizes read, for any family: an edit of any of them moves the estimate.
MODEL_FILE_KEYS = tuple(dict.fromkeys(f"model.{key}" for family in FOLDERS for key in file_keys(family)))
GAUGE_KEYS = ("model.family", *MODEL_FILE_KEYS, "model.quantize_base", "model.block_swap", "model.text_encoder_fp8",
              "model.preview_path", "dataset.resolution_px",
              "dataset.random_crop", "dataset.flip", "dataset.shuffle_tags", "network.type", "network.rank",
              "network.targets", "network.lora_modulation", "network.train_text_encoder", "training.mode",
              "training.batch_size", "training.precision", "training.gradient_checkpointing",
              "training.cache_latents", "training.cache_text_embeddings", "training.max_sequence_length",
              "optimizers.unet.type", "optimizers.unet.params")

GAUGE_CSS = """
.easel-fit { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 0.6rem 0.8rem; }
.easel-fit-head { font-size: 1.05rem; margin-bottom: 0.4rem; }
.easel-fit-bar { position: relative; height: 1.4rem; border-radius: 6px; overflow: hidden; display: flex;
  background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary); }
.easel-fit-seg { height: 100%; border-right: 1px solid rgba(255, 255, 255, 0.7); box-sizing: border-box; }
.easel-fit-seg:nth-child(even) { opacity: 0.7; }
.easel-fit-caching { background-image: repeating-linear-gradient(45deg, transparent 0 4px,
  rgba(255, 255, 255, 0.45) 4px 8px); }
.easel-fit-budget { position: absolute; top: 0; bottom: 0; width: 2px; background: var(--body-text-color); }
.easel-fit-range { position: relative; height: 4px; margin: 2px 0 0.4rem 0; }
.easel-fit-range span { position: absolute; top: 0; bottom: 0; background: var(--body-text-color-subdued);
  opacity: 0.5; border-radius: 2px; }
.easel-fit-green .easel-fit-seg { background-color: #16a34a; }
.easel-fit-amber .easel-fit-seg { background-color: #d97706; }
.easel-fit-red .easel-fit-seg { background-color: #dc2626; }
.easel-fit-unknown .easel-fit-seg { background-color: #6b7280; }
.easel-fit-green .easel-fit-verdict { color: #15803d; }
.easel-fit-amber .easel-fit-verdict { color: #b45309; }
.easel-fit-red .easel-fit-verdict { color: #b91c1c; }
.easel-fit-parts { margin: 0.2rem 0; padding-left: 1.2rem; font-size: 0.9rem; }
.easel-fit-advice { margin-top: 0.3rem; }
.easel-fit-advice code, .easel-fit-parts code { font-size: 0.8em; opacity: 0.75; }
.easel-fit-notes { font-size: 0.8rem; color: var(--body-text-color-subdued); margin-top: 0.3rem; }
"""


# ------------------------------------------------------------------------------------------------ the card

@functools.cache
def detected_vram_gb() -> tuple[str | None, float | None]:
    """(name, total VRAM in GB) of the first GPU from nvidia-smi; (None, None) without one. Asked once per process:
    the card does not change while the GUI runs."""
    from engine.system_doctor import query_nvidia_smi

    _, gpus = query_nvidia_smi()
    return (gpus[0]["name"], gpus[0]["vram_gb"]) if gpus else (None, None)


def budget_of(choice: str | None) -> tuple[float | None, str | None]:
    """(budget GB, GPU name) for the picker's choice: a tier's or card size's VRAM ("12 GB"), or the detected
    card's (THIS_GPU)."""
    card = CARD.search(choice or "")
    if card:
        return float(card[1]), None
    name, vram = detected_vram_gb()
    return vram, name


# ------------------------------------------------------------------------------------------------ the gauge

_SIZES: dict = {}   # (family, files, their mtimes and sizes) -> ModelSizes: headers are read once per file version


def _model_sizes(model):
    files = tuple(getattr(model, key) for key in file_keys(model.family))
    key = (model.family, files, tuple(map(_stamp, files)))
    if key not in _SIZES:
        if len(_SIZES) > 16:
            _SIZES.clear()
        _SIZES[key] = model_sizes(model)
    return _SIZES[key]


def _stamp(path: str):
    try:
        stat = local_path(path).stat() if path.strip() else None
    except (OSError, ValueError):
        return None
    return stat and (stat.st_mtime_ns, stat.st_size)


def _gb(value: float) -> str:
    """16 -> '16', 15.99 -> '16', 11.5 -> '11.5'."""
    return f"{round(value, 1):g}"


def _box(kind: str, body: str) -> str:
    return f'<div class="easel-fit easel-fit-{kind}">{body}</div>'


def message_html(text: str) -> str:
    """The gauge without an estimate: why (an invalid form, a family fit does not know)."""
    return _box("unknown", f'<div class="easel-fit-head">{html.escape(text)}</div>')


INVALID_HTML = message_html("Fix the fields marked in red first: the estimate needs a valid preset.")
PLACEHOLDER_HTML = message_html("The estimate appears when a preset is loaded or a field changes.")


def gauge_html(preset, budget_gb: float | None, gpu_name: str | None = None) -> str:
    """The predicted peak VRAM of `preset` against budget_gb as a bar, its parts, and the ways to fit when over."""
    if memory_model(preset.model.family) is None:
        return message_html(f"No memory estimate for model.family {preset.model.family} yet.")
    if preset.training.mode == "vae":
        return message_html("No memory estimate for VAE training (training.mode: vae) yet.")
    try:
        sizes, settings = _model_sizes(preset.model), fit_settings(preset)
        fit = estimate(sizes, settings)
        over = budget_gb is not None and fit.phases["training"] > budget_gb
        options = advice(sizes, settings, budget_gb) if over else []
    except Exception as exc:  # noqa: BLE001 - the gauge redraws on every edit: a gap in fit must not break the form
        return message_html(f"No memory estimate ({type(exc).__name__}: {exc}).")
    kind = _verdict(fit, budget_gb)
    lines = [_head(fit, budget_gb, gpu_name, kind), _bar(fit, budget_gb), _parts(fit)]
    if kind == "red":
        lines.append(_advice(fit, options, budget_gb, sizes, settings))
    lines.append(_notes(fit, preset))
    return _box(kind, "".join(lines))


def _verdict(fit, budget_gb) -> str:
    """green: fits with the estimate's margin to spare; amber: fits, inside the margin; red: over; unknown."""
    if budget_gb is None:
        return "unknown"
    if fit.vram_gb > budget_gb:
        return "red"
    return "amber" if fit.range_gb[1] > budget_gb else "green"


def _head(fit, budget_gb, gpu_name, kind) -> str:
    card = f" ({html.escape(gpu_name.removeprefix('NVIDIA '))})" if gpu_name else ""
    if budget_gb is None:
        why = (f"{html.escape(gpu_name)}: its memory could not be read" if gpu_name else
               "no NVIDIA GPU found") + ": choose a tier to compare"
        return f'<div class="easel-fit-head"><b>≈ {fit.vram_gb:.1f} GB</b> at its peak · {why}</div>'
    words = {"green": f"fits, {budget_gb - fit.vram_gb:.1f} GB to spare",
             "amber": f"fits, but tight: within the estimate's ±{fit.margin:.0%}",
             "red": f"does not fit: {fit.vram_gb - budget_gb:.1f} GB over"}[kind]
    phase = "" if fit.phase == "training" else \
        f" · the peak is while {fit.phase} (before training); training itself ≈ {fit.phases['training']:.1f} GB"
    return (f'<div class="easel-fit-head"><b>≈ {fit.vram_gb:.1f} GB of {_gb(budget_gb)} GB</b>{card} · '
            f'<span class="easel-fit-verdict">{words}</span>{phase}</div>')


def _bar(fit, budget_gb) -> str:
    """Segments for the training parts (and the caching phase's extra, hatched), a line at the budget, and the
    estimate's margin as a thin band under the bar."""
    low, high = fit.range_gb
    scale = max(budget_gb or 0.0, high)
    segments = [(p.what, p.vram_gb, "") for p in fit.parts if p.vram_gb > 0]
    if fit.vram_gb > fit.phases["training"]:
        segments.append((f"while {fit.phase}", fit.vram_gb - fit.phases["training"], " easel-fit-caching"))
    bar = "".join(f'<div class="easel-fit-seg{extra}" style="width:{100 * gb / scale:.2f}%" '
                  f'title="{html.escape(what)}: {gb:.1f} GB"></div>' for what, gb, extra in segments)
    if budget_gb is not None:
        bar += f'<div class="easel-fit-budget" style="left:{100 * budget_gb / scale:.2f}%" title="budget"></div>'
    band = f'<span style="left:{100 * low / scale:.2f}%;width:{100 * (high - low) / scale:.2f}%"></span>'
    return (f'<div class="easel-fit-bar">{bar}</div>'
            f'<div class="easel-fit-range" title="the estimate\'s margin: {low:.1f}-{high:.1f} GB">{band}</div>')


def _parts(fit) -> str:
    items = "".join(f"<li>{p.vram_gb:.1f} GB — {html.escape(p.what)}</li>" for p in fit.parts if p.vram_gb >= 0.05)
    ram = f"<li>system RAM ≈ {fit.ram_gb:.1f} GB at its peak ({html.escape(fit.ram_phase)})</li>"
    return f'<ul class="easel-fit-parts">{items}{ram}</ul>'


def _advice(fit, options, budget_gb, sizes, settings) -> str:
    """The savers of fit.advice that bring it under budget, cheapest first; or how far the best falls short."""
    def words(option) -> str:
        changes = ", ".join(f"{k}: {v}" for sv in option for k, v in sv.changes.items())
        return (" and ".join(f"<b>{html.escape(sv.words)}</b> (−{sv.saves_gb:.1f} GB)" for sv in option)
                + f" → ≈ {option[-1].vram_gb:.1f} GB <code>{html.escape(changes)}</code>")

    others = [f"<b>{words}</b> (−{saved:.1f} GB)" for words, saved in _other_savers(sizes, settings) if saved >= 0.1]
    too_small = "" if others else ": this card is too small for these settings"
    fitting = [o for o in options if o[-1].vram_gb <= budget_gb]
    lines = []
    if fitting:
        lines.append("To fit, turn on: " + "<br>or ".join(words(o) for o in fitting[:3]))
    elif options:
        lines.append(f"Even with {words(options[0])} it is over{too_small}.")
    elif fit.phases["training"] <= budget_gb:
        lines.append("Training fits; the card is fuller while the captions and images are encoded before it: close "
                     "programs that use the GPU.")
    else:
        lines.append(f"No memory saver is left to turn on{too_small}.")
    if others:
        lines.append(("Also: " if fitting else "What else saves memory: ") + " · ".join(others))
    return "".join(f'<div class="easel-fit-advice">{line}</div>' for line in lines)


def _other_savers(sizes, settings) -> list[tuple[str, float]]:
    """[(words, GB saved)] of the changes fit.advice does not offer (it keeps what shapes the step as it is):
    gradient checkpointing, a batch of 1, and the text encoders off the card (their outputs cached)."""
    changes = []
    if not settings.gradient_checkpointing:
        changes.append(("Gradient checkpointing on", replace(settings, gradient_checkpointing=True)))
    if settings.batch_size > 1:
        changes.append(("Batch size 1 (raise Gradient accumulation to keep the effective batch)",
                        replace(settings, batch_size=1)))
    if settings.train_text_encoder or not settings.cache_text:
        changes.append(("Train text encoder off, Cache text embeddings on, Shuffle tags off",
                        replace(settings, train_text_encoder=False, cache_text=True)))
    start = estimate(sizes, settings).phases["training"]
    return [(words, start - estimate(sizes, changed).phases["training"]) for words, changed in changes]


def _notes(fit, preset) -> str:
    notes = list(fit.notes)
    if preset.training.mode == "rl":
        notes.append("RL fine-tuning also generates images with the model, which this estimate does not count")
    notes.append(f"an estimate (±{fit.margin:.0%}) from the model's files, by engine/models/fit/")
    return f'<div class="easel-fit-notes">{"<br>".join(html.escape(n) for n in notes)}</div>'


# ------------------------------------------------------------------------------------------------ the section

class CardPicker(gr.Radio):
    """The "Compare with" radio. A switch of family replaces its choices while events that read it may already be on
    their way with the old one (the gauge's redraw fires on the same edit): such a choice is passed on, not refused
    with an error ("9B · 16 GB" of FLUX.2 klein reaching the server once it holds Z-Image's choices). budget_of and
    Apply read any "<N> GB" choice; the picker's own update to "this GPU" follows at once."""

    is_template = True   # drawn by Gradio's own Radio

    def preprocess(self, payload):
        if isinstance(payload, str) and payload not in [value for _, value in self.choices]:
            return payload
        return super().preprocess(payload)


def build(form: Form) -> dict:
    """The "Will it fit?" section: a picker of the family's tiers, "Apply tier settings", and the gauge (drawn by
    wire's redraw). It starts with the form's default family; wire's follow_family keeps it with the form's."""
    family, path = form.specs[FAMILY_KEY].default, form.specs[PATH_KEY].default
    gr.Markdown("### Will it fit?")
    with gr.Row(equal_height=False):
        tier = CardPicker([THIS_GPU, *fit_tiers.card_choices(family)], value=THIS_GPU, label="Compare with",
                           elem_id="fit-tier", scale=3, info=picker_info(family))
        apply = gr.Button("Apply tier settings", elem_id="fit-apply", size="sm", scale=0, min_width=180,
                          visible=bool(fit_tiers.tiers_for(family)))
    gauge = gr.HTML(PLACEHOLDER_HTML, elem_id="fit-gauge")
    help_md = gr.Markdown(fit_tiers.tier_help(form, family, path), elem_id="fit-tier-help")
    return {"tier": tier, "apply": apply, "gauge": gauge, "help": help_md}


def picker_info(family: str | None) -> str:
    if fit_tiers.tiers_for(family):
        return f"The card this run is for: the one in this PC, or one of the {fit_tiers.family_label(family)} " \
               f"VRAM tiers."
    return "The card this run is for: the one in this PC, or a card of that size."


def picker_updates(form: Form, parts: dict, family: str | None, choice: str | None,
                   model_path: str | None = None) -> dict:
    """The picker, its help and Apply for `family`: its tiers (or card sizes), the choice kept where it is still
    offered; the help marks the tiers of model_path's size."""
    cards = fit_tiers.card_choices(family)
    return {parts["tier"]: gr.update(choices=[THIS_GPU, *cards], value=choice if choice in cards else THIS_GPU,
                                     info=picker_info(family)),
            parts["help"]: fit_tiers.tier_help(form, family, model_path),
            parts["apply"]: gr.update(visible=bool(fit_tiers.tiers_for(family)))}


def wire(form: Form, parts: dict) -> None:
    """The gauge redraws on an edit of a GAUGE_KEYS field and on a tier change; Apply sets the family's tier for the
    choice (for "this GPU" or a card size, the tier made for that card; for a family whose models come in sizes, the
    tier of the form's model: fit_tiers.tier_to_apply), then redraws; a person's choice of family brings its tiers,
    and an edit of model.path marks its size's in the help. parts gains "redraw" ({widget: value} -> html), "inputs"
    (what redraw reads: the form and the picker), "applied" (Apply's event, for the app to chain its checks) and
    "follow_family" with its "family_inputs" and "family_outputs" (loads chain it: ui/app.py after_load)."""
    tier, gauge, family_w, path_w = parts["tier"], parts["gauge"], form.widgets[FAMILY_KEY], form.widgets[PATH_KEY]

    def redraw(values: dict) -> str:
        values = dict(values)
        budget, gpu = budget_of(values.pop(tier, THIS_GPU))
        try:
            preset = form.to_preset(values)
        except ConfigError:
            return INVALID_HTML
        return gauge_html(preset, budget, gpu)

    def apply(values: dict) -> dict:
        values = dict(values)
        choice = values.pop(tier, THIS_GPU)
        family, path = values.get(family_w), values.get(path_w)
        tiers = fit_tiers.tiers_for(family)
        vram = None if choice in tiers else budget_of(choice)[0]   # a tier's card is its own: no GPU asked
        name = fit_tiers.tier_to_apply(family, choice, vram, path)
        return fit_tiers.tier_updates(form, tiers[name], values) if name else {}

    def follow_family(values: dict) -> dict:
        return picker_updates(form, parts, values.get(family_w), values.get(tier), values.get(path_w))

    inputs = {*form.inputs(), tier}
    parts.update(redraw=redraw, inputs=inputs, follow_family=follow_family, family_inputs={family_w, path_w, tier},
                 family_outputs=[tier, parts["help"], parts["apply"]])
    family_w.input(follow_family, inputs=parts["family_inputs"], outputs=parts["family_outputs"],
                   show_progress="hidden", api_name="fit_family")
    path_w.input(lambda values: {parts["help"]: fit_tiers.tier_help(form, values.get(family_w), values.get(path_w))},
                 inputs={family_w, path_w}, outputs=[parts["help"]], show_progress="hidden",
                 trigger_mode="always_last", api_name="fit_model_size")
    triggers = [form.widgets[k].input for k in GAUGE_KEYS if k in form.widgets] + [tier.change]
    gr.on(triggers=triggers, fn=redraw, inputs=inputs, outputs=gauge, show_progress="hidden",
          trigger_mode="always_last", api_name="fit_gauge")
    parts["applied"] = parts["apply"].click(apply, inputs=inputs, outputs=form.components(), api_name="fit_apply")
    parts["applied"].then(redraw, inputs=inputs, outputs=gauge, show_progress="hidden", trigger_mode="always_last")
