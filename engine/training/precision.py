"""Device and precision of a run: where it trains, accelerate's mixed precision, and the dtype of the frozen weights.

    device, mixed, weight_dtype = choose_precision(training, network, events, family.caps.default_precision)
"""
from __future__ import annotations

import torch

from engine.failures import UserError
from engine.training.speed import enable_tf32


def choose_precision(training, network, events, default_precision: str = "auto") -> tuple[str, str, torch.dtype]:
    """(device, accelerate mixed_precision, dtype of the frozen weights). CPU trains in fp32; `auto` picks the
    family's default_precision (its Capabilities), which is itself auto (bf16 where the GPU has it, else fp16) for
    most."""
    if not torch.cuda.is_available():
        if training.precision not in ("fp32", "auto"):
            events.emit("warning", message=f"No CUDA GPU found: training on the CPU in fp32 (training.precision "
                                           f"{training.precision} needs a GPU). This is slow except for tiny models.")
        return "cpu", "no", torch.float32
    enable_tf32()
    precision = resolved_precision(training.precision, native_bf16(), default_precision)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("training.precision: bf16 is not supported by this GPU.",
                        "Use training.precision: fp16 (cards older than RTX 30xx).")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    # a full fine-tune keeps fp32 master weights; a LoRA keeps the frozen base in the half type (half the VRAM)
    weight_dtype = torch.float32 if network.type == "full" else dtypes[precision]
    if training.precision == "auto":
        events.emit("status", phase="precision", text=f"Precision auto: {precision} on this GPU.")
    return "cuda", mixed, weight_dtype


def resolved_precision(precision: str, bf16_native: bool, default_precision: str = "auto") -> str:
    """training.precision on a GPU: `auto` is the family's default_precision; when that is auto too, bf16 where the
    card has it natively (RTX 30xx and newer), else fp16. FLUX's is bf16: its activations overflow fp16 (an older
    card emulates bf16, slowly but correctly)."""
    if precision != "auto":
        return precision
    if default_precision != "auto":
        return default_precision
    return "bf16" if bf16_native else "fp16"


def native_bf16() -> bool:
    """bf16 in hardware (compute capability 8.0+): torch.cuda.is_bf16_supported() also says yes where it is only
    emulated, which is several times slower than fp16 there."""
    return torch.cuda.get_device_capability()[0] >= 8
