"""Training tab: the base model, profiles (fast / final), the network, the training loop and the outputs."""
from __future__ import annotations

import gradio as gr

from ui.fields import Form

# The FLUX identity guide's two profiles, as changes on top of the current form (model and dataset stay).
PROFILES = {
    "fast": {"dataset.resolution_px": 512, "dataset.min_bucket_px": 256, "dataset.max_bucket_px": 768,
             "training.max_steps": 1500, "network.rank": 32, "network.alpha": 32.0, "network.dropout": 0.0,
             "optimizers.unet.lr": 1e-4, "schedules.unet.type": "constant_with_warmup",
             "schedules.unet.warmup_steps": 100, "training.noise_offset": 0.05, "training.min_snr_gamma": 0.0,
             "network.train_text_encoder": False},
    "final": {"dataset.resolution_px": 768, "dataset.min_bucket_px": 384, "dataset.max_bucket_px": 1024,
              "training.max_steps": 2500, "network.rank": 64, "network.alpha": 64.0, "network.dropout": 0.1,
              "optimizers.unet.lr": 1e-4, "schedules.unet.type": "cosine", "schedules.unet.warmup_steps": 500,
              "training.noise_offset": 0.1, "training.min_snr_gamma": 5.0, "network.train_text_encoder": False},
}
PROFILE_HELP = ("**fast**: 512 px, 1500 steps, rank 32, constant LR — check the dataset and catch problems early.  \n"
                "**final**: 768 px, 2500 steps, rank 64, cosine LR, min-SNR 5 — the quality run once *fast* looks "
                "right. A profile changes only these fields; model and dataset stay.")


def build(form: Form) -> dict:
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("### Base model")
            form.grid(["model.family", "model.path"])
        with gr.Column(scale=2):
            gr.Markdown("### Profile")
            with gr.Row():
                fast = gr.Button("Apply fast profile", size="sm")
                final = gr.Button("Apply final profile", size="sm")
            gr.Markdown(PROFILE_HELP)
    form.section("model", advanced_label="Advanced model options")
    gr.Markdown("### Network")
    form.section("network", advanced_label="Advanced network options")
    gr.Markdown("### Training")
    form.section("training", advanced_label="Advanced training options")
    gr.Markdown("### Output")
    form.section("output", advanced_label="Advanced output options")
    return {"profile_buttons": {"fast": fast, "final": final}}


def profile_updates(form: Form, name: str) -> dict:
    """Widget updates for a profile: only the keys it sets."""
    from ui.fields import to_widget
    return {form.widgets[k]: to_widget(form.specs[k], v) for k, v in PROFILES[name].items() if k in form.widgets}
