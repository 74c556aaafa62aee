"""Is a model on disk an SDXL one? (no weights loaded; engine/models/families/detect.py asks)"""
from __future__ import annotations

from pathlib import Path


def family_of_folder(index: dict, folder: Path) -> str | None:
    return "sdxl" if index.get("_class_name", "").startswith("StableDiffusionXL") else None


def family_of_checkpoint(keys: list[str]) -> str | None:
    """The second text encoder (OpenCLIP bigG) is SDXL's alone."""
    return "sdxl" if any(k.startswith("conditioner.embedders.1.") for k in keys) else None
