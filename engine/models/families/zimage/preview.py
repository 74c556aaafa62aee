"""Z-Image's samples on Turbo (model.preview_path), with the LoRA being trained: Turbo's 8 steps without classifier-
free guidance. The shared part (loading once, copying the run's adapters in) is engine/models/preview.py."""
from __future__ import annotations

PREVIEW_STEPS = 8          # Turbo's 8 function evaluations (its model card: 9 scheduler steps, 8 DiT forwards)
PREVIEW_GUIDANCE = 1.0     # distilled without classifier-free guidance: CFG 1 (ZImagePipeline's 0)


def preview_pipeline(comps, model_cfg, dtype, progress):
    """The ZImagePipeline on Turbo's transformer, sharing the run's VAE, text encoder and tokenizer."""
    from diffusers import ZImagePipeline

    from engine.models.families.zimage.loading import load_transformer
    from engine.models.preview import distilled_transformer

    pipe = comps.pipe
    out = ZImagePipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                         tokenizer=pipe.tokenizer,
                         transformer=distilled_transformer(comps, model_cfg, dtype, progress, load_transformer))
    out.set_progress_bar_config(disable=True)
    return out
