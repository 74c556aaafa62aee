"""Model families: one file each; this dict is the table of contents (keys = model.family in the preset).

A new family (FLUX, a small DiT) is one more file with a Family record (engine/models/families/base.py) and one entry here.
"""
from __future__ import annotations

from engine.models.families.base import Components, Family
from engine.models.families.dit.record import DIT
from engine.models.families.flux.record import FLUX
from engine.models.families.sd.record import SD2, SD15
from engine.models.families.sdxl.record import SDXL
from engine.registry import choose

FAMILIES: dict[str, Family] = {"sd15": SD15, "sd2": SD2, "sdxl": SDXL, "flux": FLUX, "dit": DIT}
# In the preset schema already (so presets can be written and checked), not trainable yet.
PLANNED: dict[str, str] = {}


def get_family(name: str) -> Family:
    if name in PLANNED:
        from engine.failures import UserError

        raise UserError(f"model.family: {name!r} cannot be trained by this version of Easel yet: {PLANNED[name]}",
                        "Its presets validate and dry-run already; train another family meanwhile.")
    return choose(FAMILIES, name, "model.family")


__all__ = ["FAMILIES", "Components", "Family", "get_family"]
