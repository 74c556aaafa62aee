"""FLUX.2 klein transformer names in Black Forest Labs' layout (flux-2-klein-base-4b.safetensors, the file a ComfyUI
user has; ComfyUI's `Flux2` model keeps these names) and diffusers' (Flux2Transformer2DModel), both ways, as one
table: the module map behind the kohya LoRA names (flux2/lora_names.py) and the state-dict conversions.

diffusers reads BFL's layout itself (single_file_utils.convert_flux2_transformer_checkpoint_to_diffusers, width-free
for FLUX.2: it cuts the double blocks' qkv in equal thirds and keeps linear1 whole), but it consumes its input, has
no reverse direction and no module-level map, which the LoRA names need. This table is checked against that
converter in tests/test_flux2_lora_format.py, at klein's full widths on the meta device and on a tiny model's values.

Against FLUX.1 (flux/bfl_names.py): no per-block modulation (three shared ones, `*_modulation*.lin`), no biases,
SwiGLU MLPs (`img_mlp.0` is gate and value at once: ff.linear_in), no vector_in, and a single block's linear1 /
linear2 stay fused in diffusers too (attn.to_qkv_mlp_proj / attn.to_out): only the double blocks' qkv are split.
"""
from __future__ import annotations

import re

# torch is imported inside the functions that move tensors: the tables serve header-only code as well.

# BFL module -> diffusers module, for the modules that are only renamed ({i}: the block index).
_RENAMES = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",   # FLUX.2 dev only; klein has none
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.linear": "proj_out",
    "double_blocks.{i}.img_attn.proj": "transformer_blocks.{i}.attn.to_out.0",
    "double_blocks.{i}.txt_attn.proj": "transformer_blocks.{i}.attn.to_add_out",
    "double_blocks.{i}.img_mlp.0": "transformer_blocks.{i}.ff.linear_in",
    "double_blocks.{i}.img_mlp.2": "transformer_blocks.{i}.ff.linear_out",
    "double_blocks.{i}.txt_mlp.0": "transformer_blocks.{i}.ff_context.linear_in",
    "double_blocks.{i}.txt_mlp.2": "transformer_blocks.{i}.ff_context.linear_out",
    "double_blocks.{i}.img_attn.norm.query_norm": "transformer_blocks.{i}.attn.norm_q",
    "double_blocks.{i}.img_attn.norm.key_norm": "transformer_blocks.{i}.attn.norm_k",
    "double_blocks.{i}.txt_attn.norm.query_norm": "transformer_blocks.{i}.attn.norm_added_q",
    "double_blocks.{i}.txt_attn.norm.key_norm": "transformer_blocks.{i}.attn.norm_added_k",
    "single_blocks.{i}.linear1": "single_transformer_blocks.{i}.attn.to_qkv_mlp_proj",
    "single_blocks.{i}.linear2": "single_transformer_blocks.{i}.attn.to_out",
    "single_blocks.{i}.norm.query_norm": "single_transformer_blocks.{i}.attn.norm_q",
    "single_blocks.{i}.norm.key_norm": "single_transformer_blocks.{i}.attn.norm_k",
}
# BFL's fused q/k/v -> the diffusers layers they hold, in order along the output rows (three equal parts).
FUSED = {
    "double_blocks.{i}.img_attn.qkv": ("transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k",
                                       "transformer_blocks.{i}.attn.to_v"),
    "double_blocks.{i}.txt_attn.qkv": ("transformer_blocks.{i}.attn.add_q_proj",
                                       "transformer_blocks.{i}.attn.add_k_proj",
                                       "transformer_blocks.{i}.attn.add_v_proj"),
}
# the final adaLN: (shift, scale) rows in BFL's, (scale, shift) in diffusers' AdaLayerNormContinuous
_FINAL_MODULATION = ("final_layer.adaLN_modulation.1", "norm_out.linear")
PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # what full checkpoints / ComfyUI put in front


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")


def _fill(template: str, m: re.Match) -> str:
    return template.replace("{i}", m[1]) if m.groups() else template


_TO_DIFFUSERS = [(_pattern(b), d) for b, d in _RENAMES.items()]
_TO_BFL = [(_pattern(d), b) for b, d in _RENAMES.items()]
_FUSED_TO_DIFFUSERS = [(_pattern(b), parts) for b, parts in FUSED.items()]
_PART_TO_BFL = [(_pattern(part), b, n) for b, parts in FUSED.items() for n, part in enumerate(parts)]


def strip_prefix(key: str) -> str:
    return next((key[len(p):] for p in PREFIXES if key.startswith(p)), key)


def _renamed(module: str, table) -> str | None:
    for pattern, target in table:
        m = pattern.match(module)
        if m:
            return _fill(target, m)
    return None


def bfl_module_of(path: str) -> tuple[str, int | None] | None:
    """(BFL module, its slot in a fused qkv or None) of a Flux2Transformer2DModel module path:
    `transformer_blocks.0.attn.to_k` -> (`double_blocks.0.img_attn.qkv`, 1); None for a module BFL does not name."""
    if path == _FINAL_MODULATION[1]:
        return _FINAL_MODULATION[0], None
    name = _renamed(path, _TO_BFL)
    if name is not None:
        return name, None
    for pattern, template, n in _PART_TO_BFL:
        m = pattern.match(path)
        if m:
            return _fill(template, m), n
    return None


def diffusers_modules_of(module: str) -> tuple[str, ...]:
    """The Flux2Transformer2DModel modules a BFL module holds, in order along its output rows: one for a renamed
    module, three for a qkv; () if unknown."""
    module = strip_prefix(module)
    if module == _FINAL_MODULATION[0]:
        return (_FINAL_MODULATION[1],)
    renamed = _renamed(module, _TO_DIFFUSERS)
    if renamed is not None:
        return (renamed,)
    for pattern, parts in _FUSED_TO_DIFFUSERS:
        m = pattern.match(module)
        if m:
            return tuple(_fill(p, m) for p in parts)
    return ()


def _swap_halves(t):
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def bfl_to_diffusers(state: dict) -> dict:
    """A BFL-layout klein transformer state dict (prefixed or not) -> Flux2Transformer2DModel's names. The input is
    left as it was; RMSNorm `scale`s become `weight`s."""
    import torch

    out = {}
    for key, value in state.items():
        module, _, kind = strip_prefix(key).rpartition(".")
        kind = "weight" if kind == "scale" else kind
        parts = diffusers_modules_of(module)
        if not parts:
            raise KeyError(f"unknown FLUX.2 transformer tensor {key!r}")
        if module == _FINAL_MODULATION[0]:
            value = _swap_halves(value)
        for part, piece in zip(parts, torch.chunk(value, len(parts), dim=0)):
            out[f"{part}.{kind}"] = piece
    return out


def diffusers_to_bfl(state: dict) -> dict:
    """The reverse of bfl_to_diffusers (for writing the files a ComfyUI user has, and applying LoRAs as ComfyUI does
    in the tests)."""
    import torch

    out, pieces = {}, {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        found = bfl_module_of(module)
        if found is None:
            raise KeyError(f"unknown Flux2Transformer2DModel tensor {key!r}")
        name, slot = found
        if name.endswith("_norm"):
            kind = "scale"   # BFL's RMSNorm weights
        if name == _FINAL_MODULATION[0]:
            value = _swap_halves(value)
        if slot is None:
            out[f"{name}.{kind}"] = value
        else:
            pieces.setdefault(f"{name}.{kind}", [None] * 3)[slot] = value
    for key, parts in pieces.items():
        if any(p is None for p in parts):
            raise KeyError(f"{key}: q, k and v are not all in the state dict")
        out[key] = torch.cat(parts, dim=0)
    return out


def layout_of(keys) -> str | None:
    """"bfl" or "diffusers" for a FLUX.2 transformer's tensor names (their shared modulation tells FLUX.2 from
    FLUX.1 in both layouts), else None."""
    keys = {strip_prefix(k) for k in keys}
    if "double_stream_modulation_img.lin.weight" in keys:
        return "bfl"
    if "double_stream_modulation_img.linear.weight" in keys:
        return "diffusers"
    return None
