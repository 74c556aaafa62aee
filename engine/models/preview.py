"""The distilled sibling a run's samples are also rendered on (model.preview_path: Z-Image Turbo, FLUX.2 klein):
train on the base, see the LoRA where hobbyists use it, at the distilled model's own steps and guidance.

Training a distilled model directly wears its distillation away (musubi-tuner docs/zimage.md and docs/flux_2.md;
ai-toolkit's training adapters exist for that reason), while a base-trained LoRA loads into it. So the distilled
transformer is loaded once, stored as the base is (model.quantize_base), given the run's adapters, and before each
render the adapters' current weights are copied in: the same LoRA the saved file holds. Each family's record builds
its pipeline around it (its preview_pipeline) and says the steps and guidance (Family.preview_sampling).
"""
from __future__ import annotations

import torch


def distilled_transformer(comps, model_cfg, dtype, progress, load):
    """The preview transformer with the run's LoRA as it is now; load(source, model_cfg, dtype, progress, key) reads
    it the first time (the family's loader: a file, a folder or a Hub id), then it waits in CPU RAM between uses."""
    preview = comps.extra.get("preview_transformer")
    if preview is None:
        preview = load(model_cfg.preview_path.strip(), model_cfg, dtype, progress, key="model.preview_path")
        preview.requires_grad_(False)
        for name, config in getattr(comps.denoiser, "peft_config", {}).items():
            preview.add_adapter(config, adapter_name=name)
        comps.extra["preview_transformer"] = preview
    copy_adapter_weights(comps.denoiser, preview)
    return preview


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
