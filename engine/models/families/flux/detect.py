"""Is a model on disk a FLUX.1 one? (no weights loaded; engine/models/families/detect.py asks)"""
from __future__ import annotations

from pathlib import Path


def family_of_folder(index: dict, folder: Path) -> str | None:
    return "flux" if index.get("_class_name", "").startswith("Flux") else None


def family_of_checkpoint(keys: list[str]) -> str | None:
    """BFL's double-stream blocks, bare (flux1-dev.safetensors) or under ComfyUI's checkpoint prefix; not Chroma's
    (the same blocks, with its distilled guidance layer instead of per-block modulation)."""
    if any("distilled_guidance_layer." in k for k in keys):
        return None
    return "flux" if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys) \
        else None
