"""Is a model on disk a Z-Image one? (no weights loaded; engine/models/families/detect.py asks)"""
from __future__ import annotations

from pathlib import Path

from engine.models.families.zimage.names import kind_of_keys


def family_of_folder(index: dict, folder: Path) -> str | None:
    return "zimage" if index.get("_class_name", "").startswith("ZImage") else None


def family_of_checkpoint(keys: list[str]) -> str | None:
    """The transformer in either layout, bare or under ComfyUI's prefixes."""
    return "zimage" if kind_of_keys(keys) in ("zimage_transformer", "zimage_transformer_diffusers") else None
