"""How a family's LoRA files name its modules in the kohya format: the names sd-scripts writes, which ComfyUI,
Forge and A1111 read. Each family's record gives one (Family.kohya_naming); lora.py, lora_export.py and
lora_check.py take it as an argument and know no family.

A naming says, for the denoiser: which of two name styles comes first (diffusers module paths, or the original
LDM names that sd-scripts writes for SDXL; loaders take both), the alias function between them, fixed prefixes
(FLUX's lora_unet / lora_te1 / lora_te3; None: sd-scripts' prefixes from the text encoders), and `fused`: a module
for denoisers whose file modules stand for several layers (FLUX's BFL q/k/v, engine/models/families/flux/
lora_names.py), with modules(), tensors(), fused_size(), split(), part_rank(), unplaced(), claims(),
shape_checked() and shape_check_note().
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class KohyaNaming:
    unet_style: str = "diffusers"              # the name written first: "diffusers" paths or "ldm" names
    ldm_alias: Callable | None = None          # (module path, denoiser config) -> its LDM name, or None
    prefixes: dict | None = None               # fixed {component: prefix}; None: kohya_prefixes(text encoders)
    fused: object = None                       # the fused-modules naming (FLUX's lora_names), or None
    network_module: str = "networks.lora"      # ss_network_module
    owns: Callable = lambda denoiser: False    # is `denoiser` this naming's (a file loaded without its family)
    # between the prefix and the module path: "_" writes sd-scripts' flat names (lora_unet_down_blocks_0_...);
    # "." keeps the path's dots (Z-Image's `diffusion_model.layers.0.attention.to_q`, the names ComfyUI maps)
    joiner: str = "_"

    def name(self, prefix: str, path: str) -> str:
        """The file module name of module `path` under `prefix`."""
        return prefix + self.joiner + (path if self.joiner == "." else path.replace(".", "_"))

    def claims(self, stem: str) -> str | None:
        """The component a dotted file module belongs to under this naming's fixed prefixes, or None."""
        if self.joiner != "." or not self.prefixes:
            return None
        return next((c for c, prefix in self.prefixes.items() if stem.startswith(prefix + ".")), None)


PLAIN = KohyaNaming()


def naming_of(denoiser) -> KohyaNaming:
    """The naming of the family whose denoiser this is (PLAIN for None or an unknown one): for files loaded with a
    module but no family (a user's LoRA, the tests)."""
    if denoiser is None:
        return PLAIN
    for naming in all_namings():
        if naming.owns(denoiser):
            return naming
    return PLAIN


@functools.cache
def all_namings() -> tuple[KohyaNaming, ...]:
    """Every family's naming, in the registry's order (imports the records once)."""
    from engine.models.families import FOLDERS, get_family

    found = []
    for name in FOLDERS:
        naming = get_family(name).kohya_naming
        if naming is not None and naming not in found:
            found.append(naming)
    return tuple(found)


def fused_naming(stem: str):
    """The fused naming (FLUX's lora_names) in which this kohya file module stands for several layers, or None."""
    return next((n.fused for n in all_namings() if n.fused is not None and n.fused.fused_size(stem) > 1), None)


def fused_size(stem: str) -> int:
    """How many layers a kohya file module stands for, under whichever family's naming claims it (1: one)."""
    fused = fused_naming(stem)
    return fused.fused_size(stem) if fused else 1


def claimed_component(stem: str) -> str | None:
    """The pipeline component a file module belongs to when a family's naming claims it (FLUX's BFL names, Z-Image's
    `diffusion_model.` ones: "transformer"); None otherwise."""
    for n in all_namings():
        found = n.claims(stem) or (n.fused.claims(stem) if n.fused is not None else None)
        if found:
            return found
    return None
