"""Which family a model on disk is, read from its configs or a checkpoint's tensor names (no weights loaded), so
a preset whose model.family does not match the model says so before minutes of loading end in a shape error.

Each family folder's detect.py says whether a folder's model_index.json or a checkpoint's tensor names are its own
(family_of_folder(index, folder), family_of_checkpoint(keys)); this module reads the files once and asks them all.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.failures import UserError
from engine.models.families import capabilities, detectors


def family_of_folder(folder: Path) -> str | None:
    """The family of a diffusers folder from its model_index.json (and its configs); None if unknown."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return next((found for d in detectors() if (found := d.family_of_folder(index, folder))), None)


def family_of_checkpoint(file: Path) -> str | None:
    """The family of a single .safetensors checkpoint from its tensor names (the header only)."""
    if file.suffix.lower() != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            keys = list(f.keys())
    except Exception:  # noqa: BLE001 - a damaged file is reported by the loader, with its own message
        return None
    return next((found for d in detectors() if (found := d.family_of_checkpoint(keys))), None)


def check_family(family_name: str, model_path: str) -> None:
    """A UserError when the model at model_path is of another family than model.family says."""
    path = Path(model_path).expanduser() if model_path else None
    if path is None:
        return
    found = family_of_folder(path) if path.is_dir() else family_of_checkpoint(path) if path.is_file() else None
    if found and found != family_name:
        raise UserError(f"model.path: {path.name} is {capabilities(found).a_label} model, but model.family is "
                        f"{family_name}.", f"Set model.family: {found} (or point model.path at "
                        f"{capabilities(family_name).a_label} model).")
