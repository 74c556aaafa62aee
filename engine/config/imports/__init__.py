"""Other trainers' config files, read as Easel presets (`python -m engine train FILE`, or `python -m engine import
FILE > preset.yaml`): EveryDream2's train.json, FluxFlow's optim_sched_config JSON, the kohya_ss GUI's JSON presets.

    imported(data) -> Imported | None      None: the file is an Easel preset already

Each format is one module with detect(data) and convert(data, folder) -> (Easel preset data, unmapped). Every key of
the file either becomes an Easel key or is listed in `unmapped` with the reason, never dropped silently.
Torch-free, like the rest of engine/config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.config.imports import everydream2, fluxflow, kohya_ss

EASEL_SECTIONS = ("version", "model", "dataset", "network", "training", "optimizers", "schedules", "vae",
                  "sampling", "validation", "output")


@dataclass
class Imported:
    format: str
    data: dict                                      # Easel preset data (sections), ready for preset_from_dict
    unmapped: list[str] = field(default_factory=list)  # "key = value: why", one per key with no Easel meaning


def imported(data: dict, folder: Path | None = None) -> Imported | None:
    """The Easel preset data of another trainer's config (its folder resolves relative file names), or None."""
    if any(key in data for key in EASEL_SECTIONS) and "schedulers" not in data:
        return None
    for name, module in formats().items():
        if module.detect(data):
            preset, unmapped = module.convert(data, Path(folder or "."))
            return Imported(name, preset, unmapped)
    return None


def formats() -> dict:
    """format name -> its module."""
    return {"EveryDream2 train.json": everydream2, "FluxFlow optim_sched_config": fluxflow,
            "kohya_ss GUI preset": kohya_ss}
