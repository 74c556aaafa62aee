"""How the frozen base weights are stored (model.quantize_base): as loaded, in fp8, or quantized by bitsandbytes.

fp8 is storage only: every Linear/Conv of the denoiser keeps its weight in float8_e4m3fn and is cast to the compute
dtype for its own forward (diffusers' layerwise casting hooks), so the model takes half the memory of bf16 and the
math is bf16 (fp32 on the CPU). It works on any device, which is why the CPU tests can train through it. int8 and NF4
are real quantization (bitsandbytes' Linear8bitLt / Linear4bit) and happen while loading (see `bnb_config`);
diffusers' bitsandbytes quantizer refuses to run without a GPU, so `check_quantize_supported` says so before any
minute is spent loading.
"""
from __future__ import annotations

from engine.failures import UserError

# Kept in their loaded dtype: the LoRA layers (they train), and the small input/output layers and embedders whose
# precision matters most for so few parameters (sd-scripts' fp8_base leaves the same kind of layers alone).
# Z-Image's timestep embedder also casts its input to its weight's dtype, so it cannot hold fp8 at all (diffusers
# lists it and the caption embedder as precision-sensitive: _skip_layerwise_casting_patterns). A text encoder's
# token embedding stays too (model.text_encoder_fp8: fit's TE_FP8_SHARE counts it out), and so does a causal LM's
# lm_head, often the same tensor (FLUX.2's Qwen3-4B).
FP8_SKIP_PATTERNS = ("lora_", r"^x_embedder$", r"^context_embedder$", r"^time_text_embed", r"^norm_out",
                     r"^proj_out$", r"^conv_in$", r"^conv_out$", r"^time_embedding", r"^add_embedding", "pos_embed",
                     "patch_embed", r"^all_x_embedder", r"^all_final_layer", r"^t_embedder", r"^cap_embedder",
                     r"^lm_head$", r"embed_tokens$", r"^shared$")


def store_in_fp8(module, compute_dtype, progress=None, block_lists: tuple = ()) -> int:
    """Keep `module`'s frozen Linear/Conv weights in float8_e4m3fn, computed in `compute_dtype`; returns bytes saved.

    Call after the LoRA adapters are added (their layers are skipped by name) and before training. diffusers'
    `enable_layerwise_casting` is not used: it adds the model class's own skip patterns, and FLUX's ("norm") also
    matches the blocks' modulation linears (`norm1.linear`), a quarter of FLUX's weights, which would stay in bf16.
    block_lists: the module's lists of blocks (the family's Capabilities.block_lists), cast one block at a time
    with progress(n, total) per block; the rest at once."""
    import torch
    from diffusers.hooks import apply_layerwise_casting

    before = _weight_bytes(module)
    blocks = [b for name in block_lists for b in getattr(module, name, [])]
    outside = FP8_SKIP_PATTERNS + tuple(f"^{name}$" for name in block_lists)
    apply_layerwise_casting(module, torch.float8_e4m3fn, compute_dtype, skip_modules_pattern=outside)
    for n, block in enumerate(blocks):
        if progress:
            progress(n, len(blocks))
        apply_layerwise_casting(block, torch.float8_e4m3fn, compute_dtype, skip_modules_pattern=("lora_",))
    if progress:
        progress(len(blocks), len(blocks))
    return before - _weight_bytes(module)


def _weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def check_quantize_supported(quantize: str, device: str) -> None:
    """int8 / nf4 need bitsandbytes on a CUDA GPU: say so before loading, with what to use instead."""
    if quantize not in ("int8", "nf4"):
        return
    if device != "cuda":
        raise UserError(f"model.quantize_base: {quantize} needs an NVIDIA GPU (bitsandbytes quantizes on CUDA only), "
                        f"and this run has none.",
                        "Use model.quantize_base: fp8 (half the memory of bf16, works everywhere), or none.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise UserError(f"model.quantize_base: {quantize} needs the bitsandbytes package, which is not installed.",
                        "Run install.bat (or install.sh) again, or use model.quantize_base: fp8.") from e


def bnb_config(quantize: str, compute_dtype):
    """diffusers' BitsAndBytesConfig for int8 / nf4 base weights (None for none / fp8)."""
    if quantize not in ("int8", "nf4"):
        return None
    from diffusers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
