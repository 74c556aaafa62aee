"""Z-Image's tensor names: the layout of the files a ComfyUI user has (Tongyi-MAI's original names, which ComfyUI's
`ZImage` model keeps: one fused `attention.qkv`, `attention.out`, `q_norm`/`k_norm`, `x_embedder`, `final_layer`)
and diffusers' (`to_q`/`to_k`/`to_v`, `to_out.0`, `norm_q`/`norm_k`, `all_x_embedder.2-1`, `all_final_layer.2-1`),
both ways; and which kind of file a set of tensor names is, so a mix-up names the preset key that should hold it.
"""
from __future__ import annotations

import re

from engine.models.families.flux.bfl_names import KINDS as FLUX_KINDS, kind_of_keys as flux_kind_of_keys

KINDS = {
    **FLUX_KINDS,
    "zimage_transformer": "a Z-Image transformer (z_image / z_image_turbo, ComfyUI's diffusion_models/)",
    "zimage_transformer_diffusers": "a Z-Image transformer in diffusers layout",
    "qwen3": "a Qwen3 text encoder (qwen_3_4b)",
}

# ComfyUI's checkpoint prefixes in front of the transformer's names
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# original name piece -> diffusers name piece (the fused qkv is split apart by rows instead)
_RENAMES = ((".attention.out.", ".attention.to_out.0."), (".attention.q_norm.", ".attention.norm_q."),
            (".attention.k_norm.", ".attention.norm_k."))
_TOP_RENAMES = (("x_embedder.", "all_x_embedder.2-1."), ("final_layer.", "all_final_layer.2-1."))
_QKV = re.compile(r"^(.*\.attention\.)qkv\.(weight|bias)$")


def strip_prefix(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def is_original_layout(keys) -> bool:
    return any(_QKV.match(strip_prefix(k)) for k in keys)


def original_to_diffusers(state: dict) -> dict:
    """A transformer state dict in the original layout -> diffusers' names; the fused qkv is split in three equal
    row blocks (q, k, v: Z-Image has as many key/value heads as query heads)."""
    out = {}
    for key, value in state.items():
        key = strip_prefix(key)
        if key == "norm_final.weight":  # an unused norm some exports carry; diffusers' model has none
            continue
        m = _QKV.match(key)
        if m:
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{m[1]}{part}.{m[2]}"] = chunk
            continue
        out[diffusers_name(key)] = value
    return out


def diffusers_name(original: str) -> str:
    """One unfused original tensor name -> diffusers' name."""
    for old, new in _TOP_RENAMES:
        if original.startswith(old):
            return new + original[len(old):]
    for old, new in _RENAMES:
        original = original.replace(old, new)
    return original


def diffusers_to_original(state: dict) -> dict:
    """diffusers' names -> the original layout (the inverse of original_to_diffusers, for the tests' ComfyUI files)."""
    import torch

    out, qkv = {}, {}
    for key, value in state.items():
        m = re.match(r"^(.*\.attention\.)to_([qkv])\.(weight|bias)$", key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for old, new in _TOP_RENAMES:
            if key.startswith(new):
                key = old + key[len(new):]
        for old, new in _RENAMES:
            key = key.replace(new, old)
        out[key] = value
    for (stem, end), parts in qkv.items():
        out[f"{stem}qkv.{end}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def kind_of_keys(keys) -> str | None:
    """Which of KINDS a .safetensors file with these tensor names is; None if none."""
    keys = [strip_prefix(k) for k in keys]
    if any(".lora_down." in k or ".lora_A." in k for k in keys):
        return "lora"
    if any(k.startswith("noise_refiner.") for k in keys) or is_original_layout(keys):
        return "zimage_transformer_diffusers" if any(".attention.to_q." in k for k in keys) else "zimage_transformer"
    if any(re.match(r"^(model\.)?layers\.\d+\.self_attn\.q_norm\.", k) for k in keys):  # Qwen3: q/k norms
        return "qwen3"
    return flux_kind_of_keys(keys)


def file_kind(path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return kind_of_keys(f.keys())
