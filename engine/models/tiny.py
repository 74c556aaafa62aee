"""Tiny random-init diffusers model folders, built offline, for the demo and every test.

`build_tiny(family, out_dir, seed)` writes a folder with `save_pretrained`, so the loaders the trainer uses on a
user's real model (`from_pretrained`, tokenizer loading, scheduler config) run unchanged on a few-MB model.
The shapes are the smallest that keep each family's real structure (two UNet levels with cross-attention,
a VAE with scale factor 8, two text encoders for SDXL, CLIP + T5 for FLUX); see notes/platform-facts.md §2, §4.
Each family's builder is in its folder (engine/models/families/<folder>/tiny.py, BUILDERS), built from the shared
pieces in tiny_parts.py; FAMILIES are the families that have one.

Everything is deterministic for a seed, and the caller's global RNG is left untouched (fork_rng).
The tests' single files are re-exported here: `write_single_file` (SD1.x/SD2/SDXL, families/sd/ldm_convert.py) and
`write_flux_files` (FLUX's ComfyUI files, families/flux/files.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.models.families import FOLDERS, tiny_builder
from engine.models.families.flux.files import write_flux_files  # noqa: F401  (re-export for the tests)
from engine.models.families.sd.ldm_convert import write_single_file  # noqa: F401  (re-export for the tests)
from engine.models.tiny_parts import tiny_clip_tokenizer, tiny_t5_tokenizer  # noqa: F401  (re-export)
from engine.registry import choose

FAMILIES = tuple(name for name in FOLDERS if tiny_builder(name) is not None)   # sd15, sd2, sdxl, flux


def build_tiny(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny `family` pipeline (sd15, sd2, sdxl, flux) and save it to `out_dir`; returns out_dir."""
    choose(dict.fromkeys(FAMILIES), family, "model.family")   # an unknown family: the error names those with a builder
    builder = tiny_builder(family)
    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = builder()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
