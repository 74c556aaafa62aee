"""FLUX.2 klein's samples on the distilled klein (model.preview_path), with the LoRA being trained: its 4 steps at
guidance 1 (the distilled model takes no classifier-free guidance: Flux2KleinPipeline's is_distilled turns it off).
The shared part (loading once, copying the run's adapters in) is engine/models/preview.py."""
from __future__ import annotations

PREVIEW_STEPS = 4          # the distilled klein's steps (BFL's model card; Flux2KleinPipeline's example)
PREVIEW_GUIDANCE = 1.0


def preview_pipeline(comps, model_cfg, dtype, progress):
    """A Flux2KleinPipeline (is_distilled) on the distilled transformer, sharing the run's AE, Qwen3 and tokenizer."""
    from diffusers import Flux2KleinPipeline

    from engine.models.families.flux2.loading import load_transformer
    from engine.models.preview import distilled_transformer

    pipe = comps.pipe
    out = Flux2KleinPipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                             tokenizer=pipe.tokenizer, is_distilled=True,
                             transformer=distilled_transformer(comps, model_cfg, dtype, progress, load_transformer))
    out.set_progress_bar_config(disable=True)
    return out
