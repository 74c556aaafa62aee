"""Chroma's transformer in Black Forest Labs' layout (the file a ComfyUI user has in models/diffusion_models/, e.g.
Chroma1-HD.safetensors) and diffusers' (ChromaTransformer2DModel), both ways; and telling the files apart.

Chroma is FLUX.1-schnell with its per-block modulation linears (img_mod, txt_mod, modulation, the final adaLN) and
its time/vector/guidance embedders removed: one small network, `distilled_guidance_layer`, computes every block's
modulation from the timestep. So a Chroma file is FLUX.1's BFL layout minus those tensors (flux/bfl_names.py maps
them, fused q/k/v and linear1 included, widths read from the tensors) plus the approximator, whose only renames are
its MLPs' in_layer/out_layer (diffusers: linear_1/linear_2) and its RMSNorms' `scale` (diffusers: `weight`).
diffusers' own converter (single_file_utils.convert_chroma_transformer_checkpoint_to_diffusers) hard-codes the
3072 width, so it cannot read the tests' tiny Chroma; tests/test_chroma_family.py checks this one against it.

torch is imported by flux/bfl_names.py's functions only when tensors move: this module stays torch-free for
"will it fit".
"""
from __future__ import annotations

import re

from engine.models.families.flux import bfl_names as flux

APPROXIMATOR = "distilled_guidance_layer."
# BFL -> diffusers inside the approximator (keys that match none keep their name: in_proj, out_proj)
_APPROXIMATOR_RENAMES = ((re.compile(r"^(distilled_guidance_layer\.layers\.\d+)\.in_layer\."), r"\1.linear_1."),
                         (re.compile(r"^(distilled_guidance_layer\.layers\.\d+)\.out_layer\."), r"\1.linear_2."),
                         (re.compile(r"^(distilled_guidance_layer\.norms\.\d+)\.scale$"), r"\1.weight"))
_APPROXIMATOR_REVERSE = ((re.compile(r"^(distilled_guidance_layer\.layers\.\d+)\.linear_1\."), r"\1.in_layer."),
                         (re.compile(r"^(distilled_guidance_layer\.layers\.\d+)\.linear_2\."), r"\1.out_layer."),
                         (re.compile(r"^(distilled_guidance_layer\.norms\.\d+)\.weight$"), r"\1.scale"))


def _renamed(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def chroma_to_diffusers(state: dict) -> dict:
    """A BFL-layout Chroma transformer state dict (bare or under ComfyUI's `model.diffusion_model.`) ->
    ChromaTransformer2DModel names."""
    state = {k.removeprefix(flux.PREFIXES[0]): v for k, v in state.items()}
    out = flux.bfl_to_diffusers({k: v for k, v in state.items() if not k.startswith(APPROXIMATOR)})
    out.update({_renamed(k, _APPROXIMATOR_RENAMES): v for k, v in state.items() if k.startswith(APPROXIMATOR)})
    return out


def diffusers_to_chroma(state: dict) -> dict:
    """The reverse of chroma_to_diffusers (the tests write the file a ComfyUI user has)."""
    out = flux.diffusers_to_bfl({k: v for k, v in state.items() if not k.startswith(APPROXIMATOR)})
    out.update({_renamed(k, _APPROXIMATOR_REVERSE): v for k, v in state.items() if k.startswith(APPROXIMATOR)})
    return out


# ---------------------------------------------------------------------------------------------- what a file is

KINDS = {
    "chroma_transformer": "a Chroma transformer (Chroma1-HD / Chroma1-Base, bf16 or fp8)",
    "chroma_transformer_diffusers": "a Chroma transformer in diffusers layout",
    **flux.KINDS,
}


def kind_of_keys(keys) -> str | None:
    """Which of KINDS a .safetensors file with these tensor names is; None if none. The approximator is what tells
    a Chroma transformer from a FLUX.1 one (both have double_blocks)."""
    keys = list(keys)
    found = flux.kind_of_keys(keys)
    chroma = {"flux_transformer": "chroma_transformer", "flux_transformer_diffusers": "chroma_transformer_diffusers"}
    if found in chroma and any(k.removeprefix(flux.PREFIXES[0]).startswith(APPROXIMATOR) for k in keys):
        return chroma[found]
    return found


def file_kind(path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return kind_of_keys(f.keys())
