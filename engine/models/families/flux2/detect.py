"""Is a model on disk a FLUX.2 klein one? (no weights loaded; engine/models/families/detect.py asks)"""
from __future__ import annotations

from pathlib import Path

from engine.models.families.flux2.names import kind_of_keys


def family_of_folder(index: dict, folder: Path) -> str | None:
    return "flux2" if index.get("_class_name", "").startswith("Flux2") else None


def family_of_checkpoint(keys: list[str]) -> str | None:
    """The transformer in BFL's or diffusers' layout, bare or under ComfyUI's prefixes (its shared modulation)."""
    return "flux2" if kind_of_keys(keys) in ("flux2_transformer", "flux2_transformer_diffusers") else None
