"""Samples tab: what the engine renders while it trains (prompts, cadence, steps, guidance, seed, LoRA strengths)."""
from __future__ import annotations

import gradio as gr

from ui.fields import Form


def build(form: Form) -> dict:
    gr.Markdown("Samples show how the LoRA learns. Use your trigger word in the prompts; the same seed at every "
                "step makes them comparable. Each prompt is rendered at every LoRA strength listed.")
    form.grid(["sampling.prompts"])
    form.grid(["sampling.every_n_steps", "sampling.strengths", "sampling.steps", "sampling.guidance_scale",
               "sampling.seed"])
    form.section("sampling", advanced_label="Advanced sample options")
    return {}
