"""Model families: one folder each; FOLDERS is the table of contents (keys = model.family in the preset).

A family's folder holds everything that is that family's, in files of fixed names that this registry reads:
    caps.py     CAPABILITIES {name: Capabilities}  what it can do, as data (torch-free: the GUI and the preset checks)
    record.py   RECORDS {name: Family}             loading, encoding, predicting, its pipeline, its export data
    memory.py   MEMORY {name: FamilyMemory}        its memory model for "will it fit" (torch-free; optional)
    tiny.py     BUILDERS {name: builder}           its tiny random model for tests and the demo (optional)
    detect.py   family_of_folder / family_of_checkpoint   which family a model on disk is (optional)
plus its own helpers (key-name maps, single-file loading). Adding a family = a folder + one line in FOLDERS (the
schema's model.family choices, and so the GUI's list, are FOLDERS' names). This module imports no torch: the record's
modules are imported when a record is asked for.
"""
from __future__ import annotations

from importlib import import_module

from engine.models.families.base import Capabilities, Components, Family
from engine.registry import choose

FOLDERS: dict[str, str] = {"sd15": "sd", "sd2": "sd", "sdxl": "sdxl", "flux": "flux", "flux2": "flux2",
                           "zimage": "zimage", "chroma": "chroma", "dit": "dit"}


def _part(name: str, part: str, table: str, required: bool = True):
    folder = choose(FOLDERS, name, "model.family")
    try:
        module = import_module(f"{__name__}.{folder}.{part}")
    except ModuleNotFoundError as e:
        if required or e.name != f"{__name__}.{folder}.{part}":
            raise
        return None
    return getattr(module, table)[name]


def capabilities(name: str) -> Capabilities:
    """What model.family `name` can do (a UserError naming the valid families for an unknown name)."""
    return _part(name, "caps", "CAPABILITIES")


def get_family(name: str) -> Family:
    """The family's runtime record (imports torch and diffusers)."""
    return _part(name, "record", "RECORDS")


def memory_model(name: str):
    """The family's engine.models.fit FamilyMemory, or None when "will it fit" does not know the family."""
    return _part(name, "memory", "MEMORY", required=False)


def tiny_builder(name: str):
    """The family's tiny random model builder (engine/models/tiny.py), or None when it has none."""
    return _part(name, "tiny", "BUILDERS", required=False)


def detectors() -> list:
    """Every family folder's detect module (family_of_folder, family_of_checkpoint), in FOLDERS' order."""
    out = []
    for folder in dict.fromkeys(FOLDERS.values()):
        try:
            out.append(import_module(f"{__name__}.{folder}.detect"))
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{folder}.detect":
                raise
    return out


__all__ = ["FOLDERS", "Capabilities", "Components", "Family", "capabilities", "detectors", "get_family",
           "memory_model", "tiny_builder"]
