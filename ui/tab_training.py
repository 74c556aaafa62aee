"""Training tab: the base model, profiles (fast / final), the network, the training loop and the outputs."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.config.fields import get_value
from engine.config.load import load_preset
from ui import family_fields, fit_gauge
from ui.fields import Form

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
PROFILE_PREFIX = "flux-identity-"   # presets/flux-identity-<name>.yaml is the FLUX identity guide's <name> profile

# What a profile sets on top of the current form; model, dataset path, trigger, samples and outputs stay.
# The values are read from the profile's preset file, so the files are the one table of the guide's numbers.
PROFILE_KEYS = (
    "dataset.resolution_px", "dataset.min_bucket_px", "dataset.max_bucket_px", "training.max_steps",
    "network.rank", "network.alpha", "network.dropout", "optimizers.unet.lr", "schedules.unet.type",
    "schedules.unet.warmup_steps", "training.noise_offset", "training.min_snr_gamma", "network.train_text_encoder",
)
PROFILE_PURPOSE = {"fast": "check the dataset and catch problems early",
                   "final": "the quality run once *fast* looks right"}


def load_profiles(presets_dir: Path = PRESETS_DIR) -> dict[str, dict]:
    """{profile name: {preset key: value}} from presets/flux-identity-*.yaml, the shortest run first."""
    profiles = {}
    for path in presets_dir.glob(f"{PROFILE_PREFIX}*.yaml"):
        preset = load_preset(path)  # resolved: keys the file leaves out hold the schema's defaults
        profiles[path.stem.removeprefix(PROFILE_PREFIX)] = {key: get_value(preset, key) for key in PROFILE_KEYS}
    return dict(sorted(profiles.items(), key=lambda item: (item[1]["training.max_steps"], item[0])))


def profile_help(profiles: dict[str, dict]) -> str:
    """One line per profile with its main numbers, as the buttons will set them."""
    lines = []
    for name, values in profiles.items():
        facts = [f"{values['dataset.resolution_px']} px", f"{values['training.max_steps']} steps",
                 f"rank {values['network.rank']}", f"{values['schedules.unet.type'].replace('_', ' ')} LR"]
        if values["training.min_snr_gamma"]:
            facts.append(f"min-SNR {values['training.min_snr_gamma']:g}")
        purpose = f" — {PROFILE_PURPOSE[name]}" if name in PROFILE_PURPOSE else ""
        lines.append(f"**{name}**: {', '.join(facts)}{purpose}.")
    return "  \n".join(lines) + "  \nA profile changes only these fields; model and dataset stay."


PROFILES = load_profiles()


# The component files a ComfyUI user keeps apart; the text-encoder ones show for the families that load them
# (ui/family_fields.py asks each family's capabilities).
FILE_KEYS = ["model.clip_l_path", "model.t5_path", "model.text_encoder_path", "model.vae_path",
             "model.single_file_config"]


def build(form: Form) -> dict:
    buttons = {}
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("### Base model")
            form.grid(["model.family", "model.path"])
            with gr.Row(equal_height=False):   # the distilled sibling the samples are also rendered on (Z-Image Turbo)
                shown_by = family_fields.columns(form, ["model.preview_path"])
        with gr.Column(scale=2):
            gr.Markdown("### Profile")
            with gr.Row():
                for name in PROFILES:
                    buttons[name] = gr.Button(f"Apply {name} profile", size="sm")
            gr.Markdown(profile_help(PROFILES))
    gr.Markdown("### Model files as ComfyUI keeps them (one file each; empty: read from the base model's folder)")
    with gr.Row(equal_height=False):
        shown_by.update(family_fields.columns(form, FILE_KEYS))
    # a DiT's size and conditioning mean nothing to an SD or FLUX run: closed unless opened
    with gr.Accordion("DiT from scratch (family dit): size and conditioning", open=False) as dit:
        form.section("model.dit", advanced_label="Advanced DiT options")
    for key in form.keys_under("model.dit"):   # a problem in one of them opens the accordion
        form.accordion_of.setdefault(key, dit)
    form.section("model", advanced_label="Advanced model options")
    gr.Markdown("### Network")
    form.section("network", advanced_label="Advanced network options")
    gr.Markdown("### Training")
    form.section("training", advanced_label="Advanced training options")
    fit = fit_gauge.build(form)   # "Will it fit?": its own heading
    with gr.Accordion("VAE training (training.mode: vae)", open=False):
        form.section("vae", advanced_label="Advanced VAE options")
    gr.Markdown("### Validation (a held-out split picks the best checkpoints)")
    form.section("validation", advanced_label="Advanced validation options")
    gr.Markdown("### Output")
    form.section("output", advanced_label="Advanced output options")
    shown_by = family_fields.containers(form, shown_by)   # block swap, in the advanced model options
    return {"profile_buttons": buttons, "fit": fit, "family_fields": family_fields.wire(form, shown_by)}


def profile_updates(form: Form, name: str) -> dict:
    """Widget updates for a profile: only the keys it sets."""
    from ui.fields import to_widget
    return {form.widgets[k]: to_widget(form.specs[k], v) for k, v in PROFILES[name].items() if k in form.widgets}
