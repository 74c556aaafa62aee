"""Z-Image's memory model for "will it fit" (engine/models/fit/): its real sizes, how its files name the blocks
(diffusers' names or ComfyUI's native ones), its activations and its caption encoder's. Torch-free, like fit.

Without local files the sizes of the real model stand in, counted from the real configs on the meta device
(tests/test_zimage_fit.py recounts them): the transformer 6,154,908,736 parameters (base and Turbo alike;
zimage_tensors lays it out: 2 noise refiners of 180,910,336, 2 context refiners of 176,962,816 (no adaLN), 30 main
layers of 180,910,336), Qwen3-4B (transformers' Qwen3Model: 2560 wide, 36 layers, tied embeddings) 4,022,468,096,
FLUX.1's AE 83,819,683. Block swap counts 34 blocks in run order; the engine swaps the last (main layers).

Activations at the peak: tokens x 3840 x 2 B x units x batch.
    Tokens: the noise refiners see the image's (H/16)(W/16), the context refiners the caption's, the 30 main layers
    both (single stream); each stream padded to a multiple of 32 as the transformer pads it. Caption tokens: 512,
    what encode_text pads to (training.max_sequence_length overrides it). The transformer sees only a caption's own
    tokens (~10 of chat template + the caption, often 40-200), but a run peaks at its longest caption, and the bound
    costs 0.3 GB with checkpointing (fp8, 1024 px: 10.2 GB with 512, 9.9 with 128; at 512 px 8.3 and 8.0).
    Units, measured by bench/zimage_memory.py on the CPU: a real-width Z-Image (dim 3840; 1 + 1 refiners, 2 main
    layers), 1024 image + 128 caption tokens, bf16 autocast, peft LoRA rank 16 (fp32) on the default targets, SDPA
    (saves q, k, v, o, log-sum-exp); saved-tensor hooks per block, each storage counted once:
        saved per token of its stream   noise refiner 36.06, context refiner 37.81, main layer 39.05
        (1.7x FLUX's 23: the 2.67x-wide SwiGLU's three linears, peft's fp32 copies of each adapted input, RMSNorm's
        and RoPE's fp32 intermediates)
        checkpointed (the block's inputs)   1.03-1.07;  outside the blocks 1.00;  backward's own peak 6.85
    and a live-tensor count (every aten op's outputs until freed) through forward and backward of that model:
        no checkpointing 1.008 GB measured, 1.008 predicted; checkpointing 0.411 measured, 0.414 predicted.
    With checkpointing the peak is every block's input + one main layer recomputed + its backward.
Caption encoding (caching text, on the card): Qwen3 with output_hidden_states keeps its 37 hidden states; a layer's
own peak adds 15.8 (measured on the CPU, 512 tokens, 2 and 4 real-width layers): 53 states of 2560 x 2 B per token,
x 16 captions x 512 tokens = 2.1 GB beside Qwen3's 7.5 GB (bf16): 10.8 GB, more than an 8 GB card.

System RAM (fit's phases; GB = 2**30): loading reads the transformer first and stores it in fp8 before Qwen3 is read
(zimage/loading.py), so the peak is the fp8 transformer + Qwen3 + AE (16.4 GB with the process's 3) or, bf16, all of
it (22.1). Training: the process, Qwen3 and the AE parked (10.6), + the cache, + block swap's pinned copies: each
tensor rounded up to a power of two by PyTorch's pinned allocator, 0.254 GB per fp8 main layer for 0.168 of weights
(28 blocks: 7.1 GB; 17.8 in all). Measured (tests/test_zimage_fit.py, a real-width 0.73 B model loaded as loading.py
loads a folder): bf16 takes the RAM fit predicts within 15 %; after fp8 the process's own memory is the fp8 model,
while the bf16 file's pages stay mapped beside it (safetensors maps files): clean page cache that the system drops
when short of RAM, so fit does not count it, though Task Manager and top show it.

Checked against published figures (notes/peers-2026-12.md; their GB may be 10**9 or 2**30 bytes, 7 % apart; the
training phase, rank 16, checkpointing, text cached, 512 caption tokens):
- OneTrainer#1269 (bf16, no quantization, batch 2, 1k-1.5k px): ~20 GB. Here 19.3 GB at 1024 px, 22.2 at 1280.
- OneTrainer's presets (fp8 blocks, fp8 Qwen3, 512 px, batch 2, AdamW): 16 GB and 8 GB with 60 % offloaded. Here
  9.4 GB, and 6.6 GB with 18 blocks swapped. Caching text in bf16 needs 10.8 GB: OneTrainer stores Qwen3 in fp8.
- ai-toolkit#550 (Turbo, 12 GB card, 512-768 px, 8-bit base, adamw8bit): here 8.3-9.0 GB.
- SimpleTuner quickstart/ZIMAGE.md (rank 16, every linear; settings unsaid): 32-40 GB bf16, 16-24 int8, 10-12 NF4.
  Here at 1024 px 16.4 GB bf16 (57.8 without checkpointing: theirs lies between), 10.4 int8, 7.7 NF4: below their
  ranges, but at their own H100 int8 run with checkpointing, 9.70 GiB.
"""
from __future__ import annotations

import re

from engine.models.fit.family import BlockLayout, FamilyMemory
from engine.models.fit.headers import Component, Tensors
from engine.models.fit.settings import Settings

# activations in units of (dim x 2 bytes) per token of the block's own stream and per sample (the docstring)
ZIMAGE_UNITS = {"noise_refiner": 36.1, "context_refiner": 37.8, "layers": 39.1}
ZIMAGE_OUTSIDE_UNITS, ZIMAGE_CHECKPOINT_UNITS, ZIMAGE_BACKWARD_UNITS = 1.0, 1.07, 6.9
# hidden states of 2560 x 2 B per caption token alive while Qwen3 encodes (output_hidden_states keeps all 37)
ZIMAGE_ENCODER_STATES = 53.0
SEQ_MULTIPLE = 32            # transformer_z_image.py pads each stream to it
BLOCKS = (("noise_refiner", 2), ("context_refiner", 2), ("layers", 30))   # the real model, in run order

# every Linear inside the blocks (the lead's record.py: lora_targets); adaLN_modulation.0 only with
# network.lora_modulation (the context refiners have none)
ZIMAGE_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w1",
                  "feed_forward.w2", "feed_forward.w3")
MODULATION_TARGETS = ("adaLN_modulation.0",)

# ComfyUI's native names (diffusion_models/z_image*.safetensors) -> diffusers' (the same map as diffusers'
# single_file_utils.convert_z_image_transformer_checkpoint_to_diffusers, written from the tensor names)
_NATIVE_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_NATIVE_ATTENTION = {"qkv": ("to_q", "to_k", "to_v"), "out": ("to_out.0",), "q_norm": ("norm_q",),
                     "k_norm": ("norm_k",)}
_NATIVE_OUTSIDE = {"x_embedder": "all_x_embedder.2-1", "final_layer": "all_final_layer.2-1"}
_NATIVE_BLOCK_ATTENTION = re.compile(r"^((?:noise_refiner|context_refiner|layers)\.\d+\.attention\.)"
                                     r"(qkv|out|q_norm|k_norm)$")


def diffusers_modules_of(module: str) -> tuple:
    """A module of a native-layout file -> the diffusers modules it holds, in row order (the fused qkv: to_q, to_k,
    to_v, each `dim` rows); prefixes dropped; a module named alike in both layouts is returned as it is."""
    for prefix in _NATIVE_PREFIXES:
        module = module.removeprefix(prefix)
    m = _NATIVE_BLOCK_ATTENTION.match(module)
    if m:
        return tuple(m[1] + part for part in _NATIVE_ATTENTION[m[2]])
    for native, diffusers in _NATIVE_OUTSIDE.items():
        if module == native or module.startswith(native + "."):
            return (diffusers + module[len(native):],)
    return (module,)


LAYOUT = BlockLayout(
    block=re.compile(r"^(?:model\.diffusion_model\.|diffusion_model\.)?(noise_refiner|context_refiner|layers)"
                     r"\.(\d+)\."),
    kinds=(("noise_refiner",), ("context_refiner",), ("layers",)), renamed_marks=(".attention.qkv.",),
    rename=diffusers_modules_of, width_keys=("x_embedder.weight", "x_embedder.2-1.weight"))


def zimage_tensors(layers: int = 30, refiners: int = 2, dim: int = 3840, head_dim: int = 128,
                   cap_width: int = 2560, in_channels: int = 16, patch: int = 2, native: bool = False,
                   dtype: str = "BF16") -> Tensors:
    """The tensors (names, shapes) of diffusers' ZImageTransformer2DModel; native: in ComfyUI's names (fused qkv,
    x_embedder, final_layer). The defaults are the real model (Z-Image and Z-Image Turbo)."""
    t: Tensors = {}
    hidden, adaln = int(dim / 3 * 8), min(dim, 256)
    patch_in = patch * patch * in_channels

    def linear(name, fan_in, fan_out, bias=True):
        t[f"{name}.weight"] = ((fan_out, fan_in), dtype)
        if bias:
            t[f"{name}.bias"] = ((fan_out,), dtype)

    def block(b, modulation):
        if native:
            linear(f"{b}.attention.qkv", dim, 3 * dim, bias=False)
            linear(f"{b}.attention.out", dim, dim, bias=False)
            norms = ("q_norm", "k_norm")
        else:
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                linear(f"{b}.attention.{proj}", dim, dim, bias=False)
            norms = ("norm_q", "norm_k")
        for norm in norms:
            t[f"{b}.attention.{norm}.weight"] = ((head_dim,), dtype)
        linear(f"{b}.feed_forward.w1", dim, hidden, bias=False)
        linear(f"{b}.feed_forward.w2", hidden, dim, bias=False)
        linear(f"{b}.feed_forward.w3", dim, hidden, bias=False)
        for norm in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            t[f"{b}.{norm}.weight"] = ((dim,), dtype)
        if modulation:
            linear(f"{b}.adaLN_modulation.0", adaln, 4 * dim)

    x_embedder, final = ("x_embedder", "final_layer") if native else ("all_x_embedder.2-1", "all_final_layer.2-1")
    t["x_pad_token"], t["cap_pad_token"] = ((1, dim), dtype), ((1, dim), dtype)
    linear(x_embedder, patch_in, dim)
    linear(f"{final}.linear", dim, patch_in)
    linear(f"{final}.adaLN_modulation.1", adaln, dim)
    for i in range(refiners):
        block(f"noise_refiner.{i}", True)
    for i in range(refiners):
        block(f"context_refiner.{i}", False)
    linear("t_embedder.mlp.0", 256, 1024)
    linear("t_embedder.mlp.2", 1024, adaln)
    t["cap_embedder.0.weight"] = ((cap_width,), dtype)
    linear("cap_embedder.1", cap_width, dim)
    for i in range(layers):
        block(f"layers.{i}", True)
    return t


def known_transformer(model_path: str) -> Tensors:
    """The real transformer, whatever model.path names (a Hub id, a missing file): base and Turbo are alike."""
    return zimage_tensors()


def stream_tokens(resolution_px: int, text_tokens: int) -> tuple[int, int]:
    """(image tokens, caption tokens) of a square image, each padded as the transformer pads its streams."""
    def padded(n):
        return -(-n // SEQ_MULTIPLE) * SEQ_MULTIPLE

    return padded((resolution_px // 16) ** 2), padded(text_tokens)


def zimage_activations(c: Component, s: Settings, text_tokens: int) -> tuple[float, int]:
    """(bytes of Z-Image activations at the peak of a LoRA step, image + caption tokens per sample); units: the
    module docstring. Each block counts the tokens of the stream it sees."""
    image, caption = stream_tokens(s.resolution_px, text_tokens)
    seen = {"noise_refiner": image, "context_refiner": caption, "layers": image + caption}
    kinds = c.block_kinds or tuple(kind for kind, n in BLOCKS for _ in range(n))
    if s.gradient_checkpointing:
        units = sum(ZIMAGE_CHECKPOINT_UNITS * seen[k] for k in kinds) + ZIMAGE_UNITS["layers"] * seen["layers"]
    else:
        units = sum(ZIMAGE_UNITS[k] * seen[k] for k in kinds)
    units += (ZIMAGE_OUTSIDE_UNITS + ZIMAGE_BACKWARD_UNITS) * seen["layers"]
    return units * (c.hidden or 3840) * 2 * s.batch_size, image + caption


MEMORY = {"zimage": FamilyMemory(
    "Z-Image", "transformer", ("text_encoder",), ("Qwen3-4B",), (), ZIMAGE_TARGETS, zimage_activations,
    (512, 512), 2560, ("text_encoder",), {"text_encoder": 4_022_468_096, "vae": 83_819_683},
    known_denoiser=known_transformer, modulation_targets=MODULATION_TARGETS,
    lora_scope=r"^(noise_refiner|context_refiner|layers)\.\d+\.", te_lora_targets=(),
    single_file_prefixes={"model.diffusion_model.": "transformer", "diffusion_model.": "transformer",
                          "text_encoders.qwen3_4b.transformer.": "text_encoder", "vae.": "vae", "": "transformer"},
    layout=LAYOUT, separate_keys={"text_encoder": "text_encoder_path", "vae": "vae_path"}, pinned_rounding=True,
    encoder_live_states=ZIMAGE_ENCODER_STATES)}
