"""What makes a training step fast on a GPU and costs nothing in quality: TF32 matmuls, channels_last UNets, optional
regional compilation, and the auto batch size probe. The step itself (no host sync per micro-batch, pinned
non-blocking batch copies, fused AdamW, zero_grad(set_to_none)) is in loop.py, data/cache.py and optimizers.py.
bench/train_speed.py and bench/gpu_suite.py measure the result.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.failures import is_out_of_memory


def enable_tf32() -> None:
    """fp32 matmuls and convolutions on tensor cores (TF32, Ampere and newer): the fp32 parts of a bf16 run (LoRA
    weights, the loss, the optimizer) get ~8x the throughput; bf16/fp16 math is unaffected."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def prefer_channels_last(denoiser) -> bool:
    """UNets run their convolutions faster in channels_last (NHWC) on tensor cores; transformers have no convs
    worth it. Returns whether the layout changed."""
    if "UNet" not in type(denoiser).__name__:
        return False
    denoiser.to(memory_format=torch.channels_last)
    return True


def compile_repeated_blocks(denoiser) -> bool:
    """torch.compile each repeated block class (diffusers' regional compilation: one compile reused by every
    block, ~10x faster to compile than the whole model). Returns False when the model has no repeated blocks."""
    if not getattr(denoiser, "_repeated_blocks", None):
        return False
    denoiser.compile_repeated_blocks(fullgraph=False)
    return True


class CompileTimer:
    """The one-off compile time: the first step's extra seconds over the median of the next few."""

    def __init__(self, report: Callable[[float], None], steps: int = 4):
        self.report, self.steps, self.times = report, steps, []

    def add(self, seconds: float) -> None:
        if len(self.times) > self.steps:
            return
        self.times.append(seconds)
        if len(self.times) == self.steps + 1:
            rest = sorted(self.times[1:])
            self.report(max(0.0, self.times[0] - rest[len(rest) // 2]))


def largest_fitting_batch(try_batch: Callable[[int], int], limit_bytes: int, most: int = 64,
                          headroom: float = 0.9) -> tuple[int, int]:
    """(batch size, its peak bytes): the largest batch up to `most` whose probe step peaks under headroom x
    limit_bytes; (0, 0) when not even a batch of 1 fits.

    try_batch(n) runs one step at batch n and returns the peak bytes it took, or raises an out-of-memory error.
    Doubles from 1 until a batch does not fit, then bisects between the last that did and the first that did not."""
    def fits(n: int) -> int | None:
        used = _probe(try_batch, n)
        return used if used is not None and used <= headroom * limit_bytes else None

    best, best_peak, too_big, n = 0, 0, None, 1
    while too_big is None and n <= most:
        used = fits(n)
        if used is None:
            too_big = n
        else:
            best, best_peak, n = n, used, n * 2
    while too_big is not None and too_big - best > 1:
        mid = (best + too_big) // 2
        used = fits(mid)
        if used is None:
            too_big = mid
        else:
            best, best_peak = mid, used
    return best, best_peak


def _probe(try_batch, n: int) -> int | None:
    try:
        return try_batch(n)
    except Exception as e:  # noqa: BLE001 - only an out-of-memory error means "does not fit"
        if not is_out_of_memory(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None
