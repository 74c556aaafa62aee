"""Is a model on disk an SD 1.x or SD 2.x one? (no weights loaded; engine/models/families/detect.py asks)"""
from __future__ import annotations

import json
from pathlib import Path


def family_of_folder(index: dict, folder: Path) -> str | None:
    """sd15 / sd2 from a diffusers folder's model_index.json and its UNet config."""
    pipeline = index.get("_class_name", "")
    if not pipeline.startswith("StableDiffusion") or pipeline.startswith("StableDiffusionXL"):
        return None
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # every SD 2.x UNet uses linear transformer projections (and 1024-wide text); SD 1.x uses 1x1 convs
    return "sd2" if unet.get("use_linear_projection") else "sd15"


def family_of_checkpoint(keys: list[str]) -> str | None:
    """sd2 (OpenCLIP text encoder) / sd15 (CLIP) from a single checkpoint's tensor names."""
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    return None
