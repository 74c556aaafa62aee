"""FLUX.1's memory model for "will it fit" (engine/models/fit/): its real sizes, how its files name the blocks
(diffusers' or BFL's names), and its activations. Torch-free, like fit (the GUI's gauge imports it).

Without local files (a Hub id, a missing path) the sizes of the real model stand in: FLUX.1-dev transformer
11,901,408,320 parameters (schnell 11,891,178,560; flux_tensors lays them out in full), T5-XXL encoder
4,762,310,656, CLIP-L 123,060,480, FLUX AE 83,819,683 (counted from the diffusers configs on the meta device;
tests/test_fit.py checks them).

Activations at the peak: tokens x hidden x 2 B x units x batch.
    tokens per sample = (H/16)(W/16) image tokens + 512 T5 tokens (dev; schnell 256; training.max_sequence_length).
    units per token, measured here on the CPU (bf16 autocast, peft LoRA rank 16 on the engine's block linears,
    SDPA saving q, k, v, o and the log-sum-exp) with saved-tensor hooks, per block (bench/flux_memory.py prints
    them): a double block keeps 23.1, a single block 22.3, the layers outside the blocks 1.0. With gradient
    checkpointing a block keeps only its inputs, 1.26, and one block at a time is recomputed (23.1). A block's
    backward needs about 23 more at its peak (torch.profiler's memory timeline of a real-width block on the CPU).
    Without LoRA a block keeps 13.4, notes/performance-anchors.md §3's figure: LoRA keeps every adapted linear's
    input, so its activations are 1.7x those.

Checked against published figures (notes/performance-anchors.md, notes/flux-and-peers-2026.md; they do not say
whether their GB are 10**9 or 2**30 bytes, 7 % apart):
- HF blog "flux-qlora" (RTX 4090, 512x768, rank 4, 8-bit Adam, checkpointing, cached text): bf16 LoRA ~26 GB,
  NF4 ~9 GB. Here: 26.1 GB and 9.1 GB (training).
- SimpleTuner documentation/quickstart/FLUX.md (rank 16, all linears): "a bit more than 30G" without quantization,
  "a bit more than 18G" int8; its lowest-VRAM NF4 run (512 px, Lion 8-bit): 9090 MiB. Here at 1024 px 28.8 GB
  (31.0 in 10**9 bytes) and 17.1 GB int8; 9.2 GB NF4 at 512 px.
- sd-scripts docs/flux_train_network.md (fp8 base): 24 GB "batch size 2"; 16 GB "batch 1 and --blocks_to_swap".
  Here at 1024 px, fp8, AdamW8bit: batch 2 20.1 GB, batch 1 16.8 GB (over 16: block swap).
- LoRA_Easy_Training_Scripts#344 (RTX 5060 Ti 16 GB, fp8, AdamW8bit, resolution not said): 14.3-14.5 GB in use.
  Here 15.5 GB at 768 px, 14.5 GB at 512.
"""
from __future__ import annotations

import re

from engine.models.families.flux.bfl_names import diffusers_modules_of
from engine.models.fit.family import BlockLayout, FamilyMemory
from engine.models.fit.headers import Component, Tensors
from engine.models.fit.settings import Settings

# activations in units of (hidden x 2 bytes) per token and sample (the docstring says how they were measured)
FLUX_DOUBLE_UNITS, FLUX_SINGLE_UNITS, FLUX_OUTSIDE_UNITS = 23.1, 22.3, 1.0
FLUX_CHECKPOINT_UNITS, FLUX_BACKWARD_UNITS = 1.26, 23.0

# record.py's DOUBLE_BLOCK_LINEARS + SINGLE_BLOCK_LINEARS (and MODULATION_LINEARS), inside the blocks
FLUX_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2", "proj_mlp", "proj_out")

# the blocks in diffusers' names (transformer_blocks: double, single_transformer_blocks) and in BFL's (double_blocks,
# single_blocks: the ComfyUI file, whose fused linears bfl_names.py splits into diffusers' modules)
LAYOUT = BlockLayout(
    block=re.compile(r"^(?:model\.diffusion_model\.)?(transformer_blocks|double_blocks|single_transformer_blocks|"
                     r"single_blocks)\.(\d+)\."),
    double_kinds=("transformer_blocks", "double_blocks"), renamed_kinds=("double_blocks", "single_blocks"),
    rename=diffusers_modules_of, width_keys=("img_in.weight", "x_embedder.weight"),
    guidance_keys=("guidance_in.", "guidance_embedder."))


def flux_tensors(double: int = 19, single: int = 38, hidden: int = 3072, mlp: int = 12288, head_dim: int = 128,
                 t5_width: int = 4096, clip_width: int = 768, in_channels: int = 64, guidance: bool = True,
                 dtype: str = "BF16") -> Tensors:
    """The tensors (names, shapes) of diffusers' FluxTransformer2DModel for a layout; the defaults are FLUX.1-dev."""
    t: Tensors = {}

    def linear(name, fan_in, fan_out):
        t[f"{name}.weight"], t[f"{name}.bias"] = ((fan_out, fan_in), dtype), ((fan_out,), dtype)

    linear("x_embedder", in_channels, hidden)
    linear("context_embedder", t5_width, hidden)
    embedders = [("timestep_embedder", 256)] + [("guidance_embedder", 256)] * guidance + [("text_embedder", clip_width)]
    for embedder, fan_in in embedders:
        linear(f"time_text_embed.{embedder}.linear_1", fan_in, hidden)
        linear(f"time_text_embed.{embedder}.linear_2", hidden, hidden)
    for i in range(double):
        b = f"transformer_blocks.{i}"
        for norm, ff in (("norm1", "ff"), ("norm1_context", "ff_context")):
            linear(f"{b}.{norm}.linear", hidden, 6 * hidden)
            linear(f"{b}.{ff}.net.0.proj", hidden, mlp)
            linear(f"{b}.{ff}.net.2", mlp, hidden)
        for proj in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            linear(f"{b}.attn.{proj}", hidden, hidden)
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            t[f"{b}.attn.{norm}.weight"] = ((head_dim,), dtype)
    for i in range(single):
        b = f"single_transformer_blocks.{i}"
        linear(f"{b}.norm.linear", hidden, 3 * hidden)
        linear(f"{b}.proj_mlp", hidden, mlp)
        linear(f"{b}.proj_out", hidden + mlp, hidden)
        for proj in ("to_q", "to_k", "to_v"):
            linear(f"{b}.attn.{proj}", hidden, hidden)
        for norm in ("norm_q", "norm_k"):
            t[f"{b}.attn.{norm}.weight"] = ((head_dim,), dtype)
    linear("norm_out.linear", hidden, 2 * hidden)
    linear("proj_out", hidden, in_channels)
    return t


def known_transformer(model_path: str) -> Tensors:
    """The real transformer model.path names (a Hub id, a missing file): schnell has no guidance embedding."""
    return flux_tensors(guidance="schnell" not in model_path.lower())


def flux_activations(c: Component, s: Settings, text_tokens: int) -> tuple[float, int]:
    """(bytes of FLUX activations at the peak of a LoRA step, tokens per sample); units: the module docstring."""
    tokens = (s.resolution_px // 16) ** 2 + text_tokens
    singles = len(c.blocks) - c.doubles
    if s.gradient_checkpointing:
        units = len(c.blocks) * FLUX_CHECKPOINT_UNITS + (FLUX_DOUBLE_UNITS if c.doubles else FLUX_SINGLE_UNITS)
    else:
        units = c.doubles * FLUX_DOUBLE_UNITS + singles * FLUX_SINGLE_UNITS
    units += FLUX_OUTSIDE_UNITS + FLUX_BACKWARD_UNITS
    return units * tokens * (c.hidden or 3072) * 2 * s.batch_size, tokens


MEMORY = {"flux": FamilyMemory(
    "FLUX.1-dev", "transformer", ("text_encoder", "text_encoder_2"), ("CLIP-L", "T5-XXL"), ("text_encoder",),
    FLUX_TARGETS, flux_activations, (512, 256), 4096, ("text_encoder_2",),
    {"text_encoder": 123_060_480, "text_encoder_2": 4_762_310_656, "vae": 83_819_683},
    known_denoiser=known_transformer,
    modulation_targets=("norm1.linear", "norm1_context.linear", "norm.linear"),
    lora_scope=r"^(transformer_blocks|single_transformer_blocks)\.\d+\.",
    single_file_prefixes={"model.diffusion_model.": "transformer", "text_encoders.clip_l.": "text_encoder",
                          "text_encoders.t5xxl.": "text_encoder_2", "vae.": "vae", "": "transformer"},
    layout=LAYOUT, separate_keys={"text_encoder": "clip_l_path", "text_encoder_2": "t5_path", "vae": "vae_path"})}
