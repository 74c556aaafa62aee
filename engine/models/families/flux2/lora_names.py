"""FLUX.2 klein LoRA files in the kohya format: Black Forest Labs' module names, flat, under `lora_unet_` (as
musubi-tuner's networks/lora_flux_2.py writes them): `lora_unet_double_blocks_0_img_attn_qkv`,
`lora_unet_double_blocks_0_img_mlp_0`, `lora_unet_single_blocks_0_linear1`, ...

Why these names, of the ones ComfyUI maps for its `Flux2(Flux)` model (comfy/lora.py model_lora_keys_unet):
  - ComfyUI gives every weight of the model the name `lora_unet_` + its path with underscores (the loop over
    `diffusion_model.*.weight`, for any model), and reads `<name>.alpha`: exact strength.
  - diffusers' Flux2KleinPipeline.load_lora_weights reads exactly these too: a file with `.lora_down.weight` keys goes
    through _convert_kohya_flux2_lora_to_diffusers, which scales by alpha / rank and splits a qkv into q, k and v
    (block-diagonal ups per part, a shared down otherwise).
  - The other names ComfyUI maps fail in diffusers: `diffusion_model.<BFL>` with `.alpha` keys makes its
    _convert_non_diffusers_flux2_lora_to_diffusers raise (the alphas are left over); `transformer.<diffusers path>`
    with lora_down/up is sent to the kohya converter, which knows only `lora_unet_` names; and peft's lora_A/B names
    carry no alpha ComfyUI reads (the 'diffusers' format is for diffusers).

BFL's checkpoint fuses a double block's image q, k, v (`img_attn.qkv`) and text q, k, v (`txt_attn.qkv`), which
diffusers keeps apart; those are written as FLUX.1's are (flux/lora_names.py: stacked downs, a block-diagonal up,
alpha = n * rank * scale), whose machinery this module shares. A single block's linear1 / linear2 are one layer in
both (attn.to_qkv_mlp_proj / attn.to_out), so unlike FLUX.1 nothing else is fused, and diffusers reads any width.

Only the blocks' linears are written: diffusers' kohya reader drops the shared modulation layers and the final
adaLN (it maps only img_in, txt_in, time_in and final_layer.linear outside the blocks), so a kohya file is refused
for those and the 'diffusers' format is named instead.
"""
from __future__ import annotations

import re
import sys

from engine.models.families.flux import lora_names as flux1
from engine.models.families.flux2.bfl_names import bfl_module_of
from engine.models.lora_naming import KohyaNaming

PREFIXES = {"transformer": "lora_unet"}   # klein's Qwen3 text encoder is never trained (caps: trainable 0)

# What musubi-tuner writes in a klein LoRA's header (its utils/sai_model_spec.py ARCH_FLUX_2_KLEIN_4B/9B and
# IMPL_FLUX_2; ss_base_model_version is the trainer's architecture_full_name from dataset/image_video_dataset.py;
# networks/lora_flux_2.py). It writes no modelspec.prediction_type. sd-scripts has no FLUX.2.
BASE_MODEL_VERSION = {"4b": "flux_2_klein_4b", "9b": "flux_2_klein_9b"}
ARCHITECTURE = {"4b": "Flux.2-klein-4b/lora", "9b": "Flux.2-klein-9b/lora"}
IMPLEMENTATION = "https://github.com/black-forest-labs/flux2"
NETWORK_MODULE = "networks.lora_flux_2"

_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.")
_QKV = re.compile(r"^lora_unet_double_blocks_\d+_(img|txt)_attn_qkv$")


def size_of(transformer) -> str | None:
    """"4b" or "9b": which klein a transformer is, by its width (3072 / 4096, BFL's configs); None for another."""
    return {3072: "4b", 4096: "9b"}.get(transformer.config.num_attention_heads * transformer.config.attention_head_dim)


def is_flux2_transformer(module) -> bool:
    """FLUX.2's transformer: FLUX's two block lists plus one modulation per stream, shared by its blocks."""
    return (module is not None and hasattr(module, "transformer_blocks")
            and hasattr(module, "double_stream_modulation_img"))


def bfl_module(path: str) -> tuple[str, int | None] | None:
    """(BFL module, slot) of a block linear of Flux2Transformer2DModel: `transformer_blocks.0.attn.to_k` ->
    (`double_blocks.0.img_attn.qkv`, 1); None for the norms and everything outside the blocks."""
    if not _BLOCK.match(path) or ".norm_" in path:
        return None
    return bfl_module_of(path)


def fused_size(kohya: str) -> int:
    """How many diffusers layers one file module stands for: 3 for a double block's qkv, else 1."""
    return 3 if _QKV.match(kohya) else 1


def modules(transformer) -> dict[str, list[str]]:
    """{kohya module name: the transformer's module paths it holds, q, k, v in order for a qkv}."""
    return flux1.modules_by(transformer, bfl_module)


def out_dims(kohya: str, down, up) -> list[int]:
    """The widths of a file module's parts along up's rows: a klein block's q, k and v are equally wide (a file
    whose rows do not divide by 3 gets a last part of another width, which no layer takes: named, not a crash)."""
    n = fused_size(kohya)
    width = up.shape[0] // n
    return [width] * (n - 1) + [up.shape[0] - width * (n - 1)]


def tensors(transformer, layers: dict, adapter_name: str) -> dict:
    """The kohya tensors of `layers` ({module path: peft LoRA layer}) under BFL names (the module docstring).

    Raises ValueError naming a LoRA layer outside the blocks: diffusers would not load it."""
    unreadable = sorted(p for p in layers if bfl_module(p) is None)
    if unreadable:
        raise ValueError(f"export.format: 'kohya' FLUX.2 files hold the blocks' layers only (diffusers drops the "
                         f"others): {', '.join(unreadable)}; leave them out of network.targets or use format "
                         f"'diffusers'")
    return flux1.write_modules(transformer, modules(transformer), layers, adapter_name)


def split(kohya: str, down, up, part_ranks: list[int | None]) -> list:
    """Each part's (lora_A, lora_B) of a file module (flux/lora_names.py split)."""
    return flux1.split_widths(out_dims(kohya, down, up), down, up, part_ranks)


def part_rank(kohya: str, down, up) -> int:
    """The rank an adapter needs to take one part of a file module: rank/3 for a block-diagonal qkv, else the rank."""
    return flux1.part_rank_of(out_dims(kohya, down, up), down, up)


def unplaced(tensors: dict, transformer) -> list[str]:
    """The file modules no layer of `transformer` can take as they are (no such module, or shapes that do not fit)."""
    return flux1.unplaced_in(tensors, transformer, modules(transformer), out_dims)


claims = flux1.claims   # the same `lora_unet_double_blocks_…` / `…single_blocks_…` stems: the transformer's


def shape_checked(stems: list[str], transformer) -> set[str]:
    """None: diffusers' FLUX.2 reader cuts a qkv in thirds and keeps linear1 whole, right at any width."""
    return set()


def shape_check_note(count: int) -> str:
    return f"{count} modules checked by shape"   # never: shape_checked() names none


KOHYA_NAMING = KohyaNaming(prefixes=PREFIXES, fused=sys.modules[__name__], network_module=NETWORK_MODULE,
                           owns=is_flux2_transformer)
