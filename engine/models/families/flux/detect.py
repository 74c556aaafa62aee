"""Is a model on disk a FLUX.1 one? (no weights loaded; engine/models/families/detect.py asks)"""
from __future__ import annotations

from pathlib import Path


def family_of_folder(index: dict, folder: Path) -> str | None:
    name = index.get("_class_name", "")
    return "flux" if name.startswith("Flux") and not name.startswith("Flux2") else None   # Flux2*: FLUX.2


def family_of_checkpoint(keys: list[str]) -> str | None:
    """BFL's double-stream blocks, bare (flux1-dev.safetensors) or under ComfyUI's checkpoint prefix; not Chroma's
    (the same blocks, with its distilled guidance layer instead of per-block modulation) nor FLUX.2's (its
    modulation shared by all blocks)."""
    if any("distilled_guidance_layer." in k or "double_stream_modulation_img." in k for k in keys):
        return None   # Chroma's or FLUX.2's
    return "flux" if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys) \
        else None
