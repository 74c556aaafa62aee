"""FLUX.1 transformer weights in Black Forest Labs' layout (`flux1-dev.safetensors`, what ComfyUI users have) and
diffusers' layout (FluxTransformer2DModel), both ways, plus telling the ComfyUI model files apart by their tensor names.

diffusers has a BFL -> diffusers converter (single_file_utils.convert_flux_transformer_checkpoint_to_diffusers), but it
hard-codes the full model's width (3072) to split the fused single-block projection, so it cannot read a smaller
FLUX (our tests' tiny one, or a pruned model such as Flex/Lite variants); this one reads the widths from the tensors.
The mapping is the same as diffusers' (checked in tests/test_flux_family.py against it at full width on the meta
device). The reverse direction is for the tests, which write the files a ComfyUI user has.
"""
from __future__ import annotations

import re

# torch is imported inside the functions that move tensors: the name tables serve flux/memory.py ("will it fit"),
# which reads only file headers and stays torch-free.

# BFL name -> diffusers name, for the tensors that are renamed only ({i} is the block index).
_RENAMES = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
    "double_blocks.{i}.img_mod.lin": "transformer_blocks.{i}.norm1.linear",
    "double_blocks.{i}.txt_mod.lin": "transformer_blocks.{i}.norm1_context.linear",
    "double_blocks.{i}.img_attn.proj": "transformer_blocks.{i}.attn.to_out.0",
    "double_blocks.{i}.txt_attn.proj": "transformer_blocks.{i}.attn.to_add_out",
    "double_blocks.{i}.img_mlp.0": "transformer_blocks.{i}.ff.net.0.proj",
    "double_blocks.{i}.img_mlp.2": "transformer_blocks.{i}.ff.net.2",
    "double_blocks.{i}.txt_mlp.0": "transformer_blocks.{i}.ff_context.net.0.proj",
    "double_blocks.{i}.txt_mlp.2": "transformer_blocks.{i}.ff_context.net.2",
    "double_blocks.{i}.img_attn.norm.query_norm": "transformer_blocks.{i}.attn.norm_q",
    "double_blocks.{i}.img_attn.norm.key_norm": "transformer_blocks.{i}.attn.norm_k",
    "double_blocks.{i}.txt_attn.norm.query_norm": "transformer_blocks.{i}.attn.norm_added_q",
    "double_blocks.{i}.txt_attn.norm.key_norm": "transformer_blocks.{i}.attn.norm_added_k",
    "single_blocks.{i}.modulation.lin": "single_transformer_blocks.{i}.norm.linear",
    "single_blocks.{i}.linear2": "single_transformer_blocks.{i}.proj_out",
    "single_blocks.{i}.norm.query_norm": "single_transformer_blocks.{i}.attn.norm_q",
    "single_blocks.{i}.norm.key_norm": "single_transformer_blocks.{i}.attn.norm_k",
}
# BFL fused layers -> the diffusers layers they hold, in order along the output dimension.
FUSED = {
    "double_blocks.{i}.img_attn.qkv": ("transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k",
                                       "transformer_blocks.{i}.attn.to_v"),
    "double_blocks.{i}.txt_attn.qkv": ("transformer_blocks.{i}.attn.add_q_proj", "transformer_blocks.{i}.attn.add_k_proj",
                                       "transformer_blocks.{i}.attn.add_v_proj"),
    "single_blocks.{i}.linear1": ("single_transformer_blocks.{i}.attn.to_q", "single_transformer_blocks.{i}.attn.to_k",
                                  "single_transformer_blocks.{i}.attn.to_v", "single_transformer_blocks.{i}.proj_mlp"),
}
_FINAL_MODULATION = ("final_layer.adaLN_modulation.1", "norm_out.linear")  # (shift, scale) in BFL, (scale, shift) here
PREFIXES = ("model.diffusion_model.",)  # what some full checkpoints put in front of every transformer key


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")


_RENAME_PATTERNS = [(_pattern(b), d) for b, d in _RENAMES.items()]
_REVERSE_RENAME_PATTERNS = [(_pattern(d), b) for b, d in _RENAMES.items()]
_FUSED_PATTERNS = [(_pattern(b), parts) for b, parts in FUSED.items()]


def _swap_halves(t):
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def bfl_to_diffusers(state: dict) -> dict:
    """A BFL-layout FLUX transformer state dict -> FluxTransformer2DModel names (widths read from the tensors)."""
    import torch

    state = {k.removeprefix(PREFIXES[0]): v for k, v in state.items()}
    inner = state["img_in.weight"].shape[0]
    out = {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        kind = "weight" if kind == "scale" else kind  # RMSNorm: `scale` in BFL, `weight` in diffusers
        if module == _FINAL_MODULATION[0]:
            out[f"{_FINAL_MODULATION[1]}.{kind}"] = _swap_halves(value)
            continue
        target = _renamed(module)
        if target is not None:
            out[f"{target}.{kind}"] = value
            continue
        fused = _fused(module)
        if fused is None:
            raise KeyError(f"unknown FLUX transformer tensor {key!r}")
        sizes = [inner] * (len(fused) - 1)
        sizes.append(value.shape[0] - sum(sizes))  # qkv: three equal parts; linear1: q, k, v, then the MLP
        for part, piece in zip(fused, torch.split(value, sizes, dim=0)):
            out[f"{part}.{kind}"] = piece
    return out


def diffusers_to_bfl(state: dict) -> dict:
    """The reverse of bfl_to_diffusers (for writing the files a ComfyUI user has, in tests)."""
    import torch

    reverse = {}
    for template, parts in FUSED.items():
        for n, part in enumerate(parts):
            reverse[_pattern(part)] = (template, n, len(parts))
    out, pieces = {}, {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        if module == _FINAL_MODULATION[1]:
            out[f"{_FINAL_MODULATION[0]}.{kind}"] = _swap_halves(value)
            continue
        name = _renamed(module, _REVERSE_RENAME_PATTERNS)
        if name is not None:
            out[f"{name}.{'scale' if name.endswith('_norm') else kind}"] = value  # RMSNorm weights are `scale`
            continue
        for pattern, (template, n, count) in reverse.items():
            m = pattern.match(module)
            if m:
                pieces.setdefault((template.replace("{i}", m[1]), kind), [None] * count)[n] = value
                break
        else:
            raise KeyError(f"unknown FluxTransformer2DModel tensor {key!r}")
    for (name, kind), parts in pieces.items():
        out[f"{name}.{kind}"] = torch.cat(parts, dim=0)
    return out


_PART_PATTERNS = [(_pattern(part), template, n) for template, parts in FUSED.items() for n, part in enumerate(parts)]


def bfl_module_of(path: str) -> tuple[str, int | None] | None:
    """(BFL module, its slot in a fused layer or None) of a FluxTransformer2DModel module path:
    `transformer_blocks.0.attn.to_k` -> (`double_blocks.0.img_attn.qkv`, 1); None for a module BFL does not name."""
    name = _renamed(path, _REVERSE_RENAME_PATTERNS)
    if name is not None:
        return name, None
    for pattern, template, n in _PART_PATTERNS:
        m = pattern.match(path)
        if m:
            return template.replace("{i}", m[1]), n
    return None


def diffusers_modules_of(module: str) -> tuple[str, ...]:
    """The FluxTransformer2DModel modules a BFL module holds, in order along its output rows: one for a renamed
    module, the parts of a fused one (`single_blocks.0.linear1` -> to_q, to_k, to_v, proj_mlp); () if unknown."""
    module = module.removeprefix(PREFIXES[0])
    if module == _FINAL_MODULATION[0]:
        return (_FINAL_MODULATION[1],)
    renamed = _renamed(module)
    return (renamed,) if renamed is not None else _fused(module) or ()


def _renamed(module: str, patterns=_RENAME_PATTERNS) -> str | None:
    for pattern, target in patterns:
        m = pattern.match(module)
        if m:
            return target.replace("{i}", m[1]) if m.groups() else target
    return None


def _fused(module: str) -> tuple | None:
    for pattern, parts in _FUSED_PATTERNS:
        m = pattern.match(module)
        if m:
            return tuple(p.replace("{i}", m[1]) for p in parts)
    return None


# ---------------------------------------------------------------------------------------------- what a file is

KINDS = {
    "flux_transformer": "a FLUX.1 transformer (flux1-dev / flux1-schnell)",
    "flux_transformer_diffusers": "a FLUX.1 transformer in diffusers layout",
    "t5": "a T5-XXL text encoder (t5xxl_fp16 / t5xxl_fp8_e4m3fn)",
    "clip_l": "a CLIP-L text encoder (clip_l)",
    "ae": "a FLUX/SD autoencoder (ae / vae)",
    "lora": "a LoRA file",
    "sd_checkpoint": "a whole Stable Diffusion checkpoint",
}


def kind_of_keys(keys) -> str | None:
    """Which of KINDS a .safetensors file with these tensor names is; None if none."""
    keys = list(keys)
    has = lambda *parts: any(k.startswith(parts) for k in keys)  # noqa: E731
    if any(".lora_down." in k or ".lora_A." in k for k in keys):
        return "lora"
    if has("double_blocks.", "model.diffusion_model.double_blocks."):
        return "flux_transformer"
    if has("transformer_blocks.") and has("single_transformer_blocks."):
        return "flux_transformer_diffusers"
    if has("encoder.block.", "shared.weight"):
        return "t5"
    if has("text_model.encoder.layers.", "encoder.layers.") and has("text_model.embeddings.", "embeddings."):
        return "clip_l"
    if has("decoder.up.", "decoder.up_blocks.") and has("encoder.down.", "encoder.down_blocks."):
        return "ae"
    if has("model.diffusion_model.", "cond_stage_model.", "conditioner."):
        return "sd_checkpoint"
    return None


def file_kind(path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return kind_of_keys(f.keys())


def is_schnell(keys) -> bool:
    """FLUX.1-schnell has no guidance embedding (it is timestep-distilled, not guidance-distilled)."""
    return not any("guidance_in." in k or "guidance_embedder." in k for k in keys)
