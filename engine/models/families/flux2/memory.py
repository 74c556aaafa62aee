"""FLUX.2 klein's memory model for "will it fit" (engine/models/fit/): the real sizes of the 4B and the 9B, how
their files name the blocks (diffusers' names or BFL's, which ComfyUI users have), the activations of a LoRA step
and of Qwen3 while it encodes the captions. Torch-free, like fit.

Without local files the sizes of the real model model.path names stand in ("9b" in the name: the 9B, else the 4B),
counted from the real configs on the meta device (tests/test_flux2_fit.py recounts them):
    klein 4B: transformer 3,875,544,576 (5 double blocks of 245,367,296, 20 single of 122,683,648, 195,035,136
              outside: the shared modulation, embedders, final layer); Qwen3-4B 4,022,468,096 (tied head, unsaved)
    klein 9B: transformer 9,078,581,248 (8 x 436,208,128, 24 x 218,104,064, 354,418,688 outside); Qwen3-8B
              8,190,735,360 (its own head, 622 M: ComfyUI's qwen_3_8b.safetensors is 16,381,517,176 bytes)
    FLUX.2 AE (AutoencoderKLFlux2, 32 latent channels) 84,046,372 for both.
Block swap counts 25 / 32 blocks in run order and swaps the last (single blocks first).

Activations at the peak: tokens x width x 2 B x units x batch, tokens = (H/16)(W/16) image + 512 text (what the
pipeline pads every caption to, and the transformer sees all 512: no mask). Units, measured by
bench/flux2_memory.py on the CPU: real-width klein blocks (4B: 3072 wide, 2 double + 2 single; 9B: 4096, 1 + 1),
1024 image + 512 text tokens, bf16 autocast, peft LoRA rank 16 (fp32) on every block linear, SDPA; saved-tensor
hooks per block, each storage counted once (4B width / 9B width):
    saved per token            double block 27.03 / 26.54, single block 25.22 / 25.21 (FLUX.1: 23.1 and 22.3;
                               the SwiGLU's 6x-wide input projection, the single block's fused 9x-wide one)
    checkpointed (its inputs)  1.00 (the first block also keeps the rotary tables: 1.13-1.17);  outside 1.00
    backward's own peak        16.2 / 17.3 (FLUX.1: 23)
    live-tensor peak through forward and backward (every aten op's output until freed) against this model:
        4B width, no checkpointing 1.071 GB measured, 1.078 predicted; checkpointing 0.414, 0.434
        9B width, no checkpointing 0.822 GB measured, 0.826 predicted; checkpointing 0.535, 0.555
    With checkpointing the peak is every block's input + one block recomputed + its backward.
Caption encoding (caching text, on the card): Qwen3 with output_hidden_states keeps its 37 hidden states and the
3 it stacks, measured on the CPU at 2 and 4 real layers and extrapolated to 36: 40.0 units of its width. Flux2Klein
Pipeline runs the causal LM, whose head would add the logits of the whole vocabulary (151,936 per token: 2.3 GB for
16 captions x 512 tokens); record.encode_text runs the bare Qwen3Model inside it instead, so no logits are counted.
With the logits Qwen3-4B in bf16 needed ~12.8 GB and Qwen3-8B ~22.1 GB for that pass.

System RAM (GB = 2**30): loading reads the transformer and stores it before Qwen3 is read (flux2/loading.py): 4B
17.9 GB in bf16, 14.3 with fp8; 9B 35.3 / 26.9 (the process's 3 GB included). Block swap keeps pinned copies of the
swapped blocks, each tensor rounded up to a power of two by PyTorch's pinned allocator (pinned_rounding): an fp8
single block of the 4B pins 192 MiB for its 117 MiB of weights, of the 9B 320 MiB for 208. Parameter bytes of a
real-width 2 + 2-block 4B (bench/flux2_memory.py (b)): bf16 1.734 GB and fp8 0.907 GB, as fit counts them; built
in the process, 1.941 / 1.116 GB of anonymous memory (malloc keeps ~0.2 GB more).

Checked against published figures (notes/peers-2026-12.md; their GB may be 10**9 or 2**30 bytes, 7 % apart; here
the training phase at 1024 px, rank 16, 8-bit AdamW, checkpointing, text cached; tests/test_flux2_fit.py):
- SimpleTuner's FLUX.2 quickstart (settings unsaid): 4B about 12 GB bf16 / 8 GB int8, 9B 22 / 14 GB, RAM 32+ /
  64+ GB. Here 4B 10.6 / 6.9 GB, 9B 22.1 / 13.4 GB; loading RAM in bf16 17.9 / 35.3 GB.
- OneTrainer's "#flux2 LoRA 16GB" (klein-base-9B, int8 W8A8, fp8 Qwen3, 512 px, batch 2, AdamW): here 12.7 GB;
  its "8GB" with 70 % offloaded (22 of 32 blocks): here 8.3 GB.
- musubi-tuner docs/flux_2.md (fp8, at most 13 / 16 blocks swapped): here 5.6 GB (4B) / 10.4 GB (9B) so swapped.
- ai-toolkit#653 (9B on a 12 GB 3060 with offloading): here fp8 with 16 blocks swapped 10.4 GB (9.3 at 768 px);
  ai-toolkit PR #666 (9B in fp8 on 16 GB with 60 % offloaded): here 9.8 GB.
Not yet measured on a real klein on a GPU.
"""
from __future__ import annotations

import re

from engine.models.fit.family import BlockLayout, FamilyMemory
from engine.models.fit.headers import Component, Tensors
from engine.models.fit.settings import Settings

# activations in units of (width x 2 bytes) per token (image + text) and sample (the docstring)
DOUBLE_UNITS, SINGLE_UNITS, OUTSIDE_UNITS = 27.0, 25.2, 1.0
CHECKPOINT_UNITS, BACKWARD_UNITS = 1.02, 17.3
# Qwen3 while it encodes: states of its width alive per caption token, besides the vocabulary's logits
ENCODER_STATES, VOCAB = 40.0, 151_936
TEXT_TOKENS = 512          # Flux2KleinPipeline's max_sequence_length, to which every caption is padded

# the real models: transformer/config.json and text_encoder/config.json of black-forest-labs/FLUX.2-klein-base-4B
# and -9B (the distilled klein 4B / 9B are alike); joint_attention_dim = 3 x the Qwen3 width (layers 9, 18, 27)
KLEIN = {"4b": {"double": 5, "single": 20, "heads": 24},
         "9b": {"double": 8, "single": 24, "heads": 32}}
QWEN3 = {"4b": {"hidden": 2560, "intermediate": 9728, "tied": True},     # Qwen3-4B
         "9b": {"hidden": 4096, "intermediate": 12288, "tied": False}}   # Qwen3-8B: its own lm_head
QWEN3_LAYERS, QWEN3_HEADS, QWEN3_KV_HEADS, HEAD_DIM = 36, 32, 8, 128
AE_PARAMS = 84_046_372     # AutoencoderKLFlux2's defaults, the FLUX.2 AE

# record.py's DOUBLE_BLOCK_LINEARS + SINGLE_BLOCK_LINEARS (every block linear; the modulation is shared by
# all blocks of a kind and sits outside them, so there are no modulation targets)
FLUX2_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                 "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                 "ff_context.linear_out", "attn.to_qkv_mlp_proj", "attn.to_out")

# BFL's module names (flux-2-klein-base-*.safetensors) -> diffusers', as diffusers'
# single_file_utils.convert_flux2_transformer_checkpoint_to_diffusers renames them; a fused qkv becomes 3 modules of
# `width` rows each (the single blocks' linear1 stays one: diffusers keeps it fused as to_qkv_mlp_proj)
_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_DOUBLE = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
           "img_attn.norm.query_norm": ("attn.norm_q",), "img_attn.norm.key_norm": ("attn.norm_k",),
           "img_mlp.0": ("ff.linear_in",), "img_mlp.2": ("ff.linear_out",),
           "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
           "txt_attn.proj": ("attn.to_add_out",), "txt_attn.norm.query_norm": ("attn.norm_added_q",),
           "txt_attn.norm.key_norm": ("attn.norm_added_k",), "txt_mlp.0": ("ff_context.linear_in",),
           "txt_mlp.2": ("ff_context.linear_out",)}
_SINGLE = {"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",), "norm.query_norm": ("attn.norm_q",),
           "norm.key_norm": ("attn.norm_k",)}
_OUTSIDE = {"img_in": "x_embedder", "txt_in": "context_embedder",
            "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
            "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
            "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
            "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
            "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
            "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
            "single_stream_modulation.lin": "single_stream_modulation.linear",
            "final_layer.adaLN_modulation.1": "norm_out.linear", "final_layer.linear": "proj_out"}
_BFL_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")


def diffusers_modules_of(module: str) -> tuple:
    """A module of a BFL-layout file -> the diffusers modules it holds, in row order; prefixes dropped; a module
    named alike in both layouts is returned as it is."""
    for prefix in _PREFIXES:
        module = module.removeprefix(prefix)
    m = _BFL_BLOCK.match(module)
    if m:
        kind, table = ("transformer_blocks", _DOUBLE) if m[1] == "double_blocks" else \
            ("single_transformer_blocks", _SINGLE)
        return tuple(f"{kind}.{m[2]}.{part}" for part in table.get(m[3], (m[3],)))
    for bfl, diffusers in _OUTSIDE.items():
        if module == bfl or module.startswith(bfl + "."):
            return (diffusers + module[len(bfl):],)
    return (module,)


LAYOUT = BlockLayout(
    block=re.compile(r"^(?:model\.diffusion_model\.|diffusion_model\.)?(transformer_blocks|double_blocks|"
                     r"single_transformer_blocks|single_blocks)\.(\d+)\."),
    double_kinds=("transformer_blocks", "double_blocks"), renamed_kinds=("double_blocks", "single_blocks"),
    kinds=(("transformer_blocks", "double_blocks"), ("single_transformer_blocks", "single_blocks")),
    rename=diffusers_modules_of, width_keys=("img_in.weight", "x_embedder.weight"),
    guidance_keys=("guidance_in.", "guidance_embedder."))


def variant_of(model_path: str) -> str:
    """"9b" when model.path's name says 9B (FLUX.2-klein-base-9B, flux-2-klein-base-9b.safetensors), else "4b"."""
    return "9b" if "9b" in model_path.lower() else "4b"


def flux2_tensors(double: int = 5, single: int = 20, width: int = 3072, mlp_ratio: float = 3.0,
                  text_width: int = 7680, in_channels: int = 128, head_dim: int = HEAD_DIM, guidance: bool = False,
                  dtype: str = "BF16") -> Tensors:
    """The tensors (names, shapes) of diffusers' Flux2Transformer2DModel; the defaults are klein 4B (no biases, no
    guidance embedding)."""
    t: Tensors = {}
    mlp = int(width * mlp_ratio)

    def linear(name, fan_in, fan_out):
        t[f"{name}.weight"] = ((fan_out, fan_in), dtype)

    linear("x_embedder", in_channels, width)
    linear("context_embedder", text_width, width)
    for embedder in ("timestep_embedder",) + ("guidance_embedder",) * guidance:
        linear(f"time_guidance_embed.{embedder}.linear_1", 256, width)
        linear(f"time_guidance_embed.{embedder}.linear_2", width, width)
    for name, sets in (("double_stream_modulation_img", 2), ("double_stream_modulation_txt", 2),
                       ("single_stream_modulation", 1)):
        linear(f"{name}.linear", width, 3 * sets * width)
    for i in range(double):
        b = f"transformer_blocks.{i}"
        for proj in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            linear(f"{b}.attn.{proj}", width, width)
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            t[f"{b}.attn.{norm}.weight"] = ((head_dim,), dtype)
        for ff in ("ff", "ff_context"):   # SwiGLU: the input projection holds gate and value
            linear(f"{b}.{ff}.linear_in", width, 2 * mlp)
            linear(f"{b}.{ff}.linear_out", mlp, width)
    for i in range(single):
        b = f"single_transformer_blocks.{i}"
        linear(f"{b}.attn.to_qkv_mlp_proj", width, 3 * width + 2 * mlp)
        linear(f"{b}.attn.to_out", width + mlp, width)
        for norm in ("norm_q", "norm_k"):
            t[f"{b}.attn.{norm}.weight"] = ((head_dim,), dtype)
    linear("norm_out.linear", width, 2 * width)
    linear("proj_out", width, in_channels)
    return t


def klein_tensors(variant: str = "4b", dtype: str = "BF16") -> Tensors:
    """The real klein transformer of a variant ("4b" | "9b")."""
    k, width = KLEIN[variant], KLEIN[variant]["heads"] * HEAD_DIM
    return flux2_tensors(k["double"], k["single"], width, text_width=3 * QWEN3[variant]["hidden"], dtype=dtype)


def qwen3_tensors(variant: str = "4b", layers: int = QWEN3_LAYERS, vocab: int = VOCAB, dtype: str = "BF16") -> Tensors:
    """The tensors of Qwen3ForCausalLM as the klein repositories store it (`model.` names; the 8B's own lm_head, the
    4B's tied one not saved)."""
    q = QWEN3[variant]
    hidden, inner = q["hidden"], q["intermediate"]
    t: Tensors = {"model.embed_tokens.weight": ((vocab, hidden), dtype)}
    for i in range(layers):
        b = f"model.layers.{i}"
        for proj, rows in (("q_proj", QWEN3_HEADS * HEAD_DIM), ("k_proj", QWEN3_KV_HEADS * HEAD_DIM),
                           ("v_proj", QWEN3_KV_HEADS * HEAD_DIM)):
            t[f"{b}.self_attn.{proj}.weight"] = ((rows, hidden), dtype)
        t[f"{b}.self_attn.o_proj.weight"] = ((hidden, QWEN3_HEADS * HEAD_DIM), dtype)
        t[f"{b}.self_attn.q_norm.weight"] = t[f"{b}.self_attn.k_norm.weight"] = ((HEAD_DIM,), dtype)
        t[f"{b}.mlp.gate_proj.weight"] = t[f"{b}.mlp.up_proj.weight"] = ((inner, hidden), dtype)
        t[f"{b}.mlp.down_proj.weight"] = ((hidden, inner), dtype)
        t[f"{b}.input_layernorm.weight"] = t[f"{b}.post_attention_layernorm.weight"] = ((hidden,), dtype)
    t["model.norm.weight"] = ((hidden,), dtype)
    if not q["tied"]:
        t["lm_head.weight"] = ((vocab, hidden), dtype)
    return t


def known_parts(component: str, model_path: str) -> Tensors | None:
    """The real klein model.path names, part by part: the transformer and Qwen3 of its variant (the AE: `known`)."""
    variant = variant_of(model_path)
    if component == "transformer":
        return klein_tensors(variant)
    if component == "text_encoder":
        return qwen3_tensors(variant)
    return None


def flux2_activations(c: Component, s: Settings, text_tokens: int) -> tuple[float, int]:
    """(bytes of klein activations at the peak of a LoRA step, image + text tokens per sample); units: the module
    docstring. Both block kinds see every token (the double blocks the two streams side by side)."""
    tokens = (s.resolution_px // 16) ** 2 + text_tokens
    doubles, singles = c.doubles, len(c.blocks) - c.doubles
    if s.gradient_checkpointing:
        units = (doubles + singles) * CHECKPOINT_UNITS + max(DOUBLE_UNITS if doubles else 0, SINGLE_UNITS)
    else:
        units = doubles * DOUBLE_UNITS + singles * SINGLE_UNITS
    units += OUTSIDE_UNITS + BACKWARD_UNITS
    return units * tokens * (c.hidden or 3072) * 2 * s.batch_size, tokens


# Qwen3's states are cached 3 layers wide; the pinned copies of swapped blocks are counted as PyTorch's pinned
# allocator sizes them (a power of two per tensor, as for Z-Image: new families count it so)
MEMORY = {"flux2": FamilyMemory(
    "FLUX.2 klein", "transformer", ("text_encoder",), ("Qwen3",), (), FLUX2_TARGETS, flux2_activations,
    (TEXT_TOKENS, TEXT_TOKENS), 3 * QWEN3["4b"]["hidden"], ("text_encoder",), {"vae": AE_PARAMS},
    known_parts=known_parts, known_denoiser=lambda model_path: klein_tensors(variant_of(model_path)),
    lora_scope=r"^(transformer_blocks|single_transformer_blocks)\.\d+\.", te_lora_targets=(),
    single_file_prefixes={"model.diffusion_model.": "transformer", "diffusion_model.": "transformer",
                          "": "transformer"},
    layout=LAYOUT, separate_keys={"text_encoder": "text_encoder_path", "vae": "vae_path"}, pinned_rounding=True,
    # record.encode_text runs the bare Qwen3Model inside the causal LM: no vocabulary logits (encoder_logits 0)
    encoder_live_states=ENCODER_STATES, cached_layers=3)}
