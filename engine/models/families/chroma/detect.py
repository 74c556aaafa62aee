"""Is a model on disk a Chroma one? (no weights loaded; engine/models/families/detect.py asks)"""
from __future__ import annotations

from pathlib import Path


def family_of_folder(index: dict, folder: Path) -> str | None:
    return "chroma" if index.get("_class_name", "").startswith("Chroma") else None


def family_of_checkpoint(keys: list[str]) -> str | None:
    """The approximator that replaced FLUX's modulation (distilled_guidance_layer), in BFL's layout or diffusers',
    bare or under ComfyUI's checkpoint prefix: what tells a Chroma file from a FLUX.1 one (both have
    double_blocks)."""
    from engine.models.families.chroma.bfl_names import kind_of_keys

    return "chroma" if kind_of_keys(keys) in ("chroma_transformer", "chroma_transformer_diffusers") else None
