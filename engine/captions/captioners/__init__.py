"""Captioners: one file each; every loader is `load(folder, device, settings) -> caption_batch(images) -> texts`.

The dict is the table of contents; keys are the values of `--captioner`. torch/transformers/onnxruntime are
imported inside the loaders, so importing this package is cheap.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.captions.captioners import blip, florence2, wd14

CAPTIONERS = {"blip": blip.load, "florence2": florence2.load, "wd14": wd14.load}

# config.json "model_type" -> captioner
MODEL_TYPES = {"blip": "blip", "florence2": "florence2"}


def detect(folder: Path) -> str:
    """Which captioner a model folder is for; a ValueError in the user's words when it cannot tell."""
    folder = Path(folder)
    if (folder / "model.onnx").exists() and (folder / "selected_tags.csv").exists():
        return "wd14"
    config = folder / "config.json"
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.exists() else None
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    raise ValueError(f"Cannot tell which captioner the model in {folder} is for (model_type: {model_type!r}). "
                     f"Pass --captioner with one of: {', '.join(CAPTIONERS)}.")
