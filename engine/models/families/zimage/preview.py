"""Samples on a distilled sibling: train on Z-Image base (or a de-distilled Turbo), and see the LoRA where hobbyists
use it, on Turbo at its own 8 steps without classifier-free guidance (model.preview_path).

Training on Turbo itself breaks its distillation (musubi-tuner docs/zimage.md; ai-toolkit trains Turbo only through
its training adapter or ostris' De-Turbo): a base-trained LoRA is what loads into Turbo, and this shows how it looks
there while the run goes on. The preview transformer is loaded once, stored as the base is (model.quantize_base),
given the run's adapters, and before each render the adapters' current weights are copied in: the same LoRA the
saved file holds. Its images are the samples' `preview_` files."""
from __future__ import annotations

import torch

PREVIEW_STEPS = 8          # Turbo's 8 function evaluations (its model card: 9 scheduler steps, 8 DiT forwards)
PREVIEW_GUIDANCE = 1.0     # distilled without classifier-free guidance: CFG 1 (ZImagePipeline's 0)


def preview_pipeline(comps, model_cfg, dtype, progress):
    """The ZImagePipeline on the preview transformer, sharing the run's VAE, text encoder and tokenizer, with the
    run's LoRA weights as they are now."""
    from diffusers import ZImagePipeline

    from engine.models.families.zimage.loading import load_transformer

    preview = comps.extra.get("preview_transformer")
    if preview is None:
        preview = load_transformer(model_cfg.preview_path.strip(), model_cfg, dtype, progress,
                                   key="model.preview_path")
        preview.requires_grad_(False)
        for name, config in getattr(comps.denoiser, "peft_config", {}).items():
            preview.add_adapter(config, adapter_name=name)
        comps.extra["preview_transformer"] = preview
    copy_adapter_weights(comps.denoiser, preview)
    pipe = comps.pipe
    out = ZImagePipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                         tokenizer=pipe.tokenizer, transformer=preview)
    out.set_progress_bar_config(disable=True)
    return out


@torch.no_grad()
def copy_adapter_weights(source, target) -> int:
    """Every LoRA parameter of `source` into the same-named one of `target` (same architecture, same adapters), in
    the source's dtype: peft creates a stored-in-fp8 layer's adapters in fp8, which cannot compute."""
    wanted = dict(target.named_parameters())
    copied = 0
    for name, param in source.named_parameters():
        if ".lora_" in name:
            wanted[name].data = param.detach().to(wanted[name].device).clone()
            copied += 1
    return copied
