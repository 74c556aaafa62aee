"""Which family a model on disk is, read from its configs or a checkpoint's tensor names (no weights loaded), so
a preset whose model.family does not match the model says so before minutes of loading end in a shape error."""
from __future__ import annotations

import json
from pathlib import Path

from engine.failures import UserError

NAMES = {"sd15": "an SD 1.x", "sd2": "an SD 2.x", "sdxl": "an SDXL", "flux": "a FLUX.1"}


def family_of_folder(folder: Path) -> str | None:
    """sd15 / sd2 / sdxl / flux from a diffusers folder's model_index.json and unet config; None if unknown."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pipeline = index.get("_class_name", "")
    if pipeline.startswith("StableDiffusionXL"):
        return "sdxl"
    if pipeline.startswith("Flux"):
        return "flux"
    if pipeline.startswith("StableDiffusion"):
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        # every SD 2.x UNet uses linear transformer projections (and 1024-wide text); SD 1.x uses 1x1 convs
        return "sd2" if unet.get("use_linear_projection") else "sd15"
    return None


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
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "flux"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    return None


def check_family(family_name: str, model_path: str) -> None:
    """A UserError when the model at model_path is of another family than model.family says."""
    path = Path(model_path).expanduser() if model_path else None
    if path is None:
        return
    found = family_of_folder(path) if path.is_dir() else family_of_checkpoint(path) if path.is_file() else None
    if found and found != family_name:
        raise UserError(f"model.path: {path.name} is {NAMES[found]} model, but model.family is {family_name}.",
                        f"Set model.family: {found} (or point model.path at {NAMES[family_name]} model).")
