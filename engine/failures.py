"""Turning what goes wrong into an `error` event in the user's words: what happened, what to do, then the traceback.

    UserError(message, hint)  raised anywhere a problem is the user's to fix (a path, a missing config, ...)
    CaptionerUnavailable      a captioning model cannot be loaded (not downloaded, a missing package); .hint
    NonFiniteLoss             the loss became NaN/inf; names the batch's files
    describe(exc, ...)        -> (message, hint) for any exception, OOM included
"""
from __future__ import annotations

import errno
import shutil
import traceback
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; `message` says what is wrong, `hint` what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


class CaptionerUnavailable(RuntimeError):
    """The model cannot be loaded (not downloaded, offline, a missing package); .hint says what to do."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


class NonFiniteLoss(Exception):
    def __init__(self, step: int, loss: float, files: list[str]):
        super().__init__(f"loss is {loss} at step {step}")
        self.step, self.loss, self.files = step, loss, files


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def oom_savers(training, network, dataset, unet_optimizer_type: str, model=None, block_swap_max: int = 0) -> list[str]:
    """Memory savers that are still off, cheapest first (cost to speed or quality): for FLUX fp8 base, then block
    swap (up to block_swap_max, the family's Capabilities: 0 where it has none), then an 8-bit optimizer, then the
    resolution."""
    savers = []
    if not training.gradient_checkpointing:
        savers.append("training.gradient_checkpointing: true (about 20% slower, no quality cost)")
    if not training.cache_latents:
        savers.append("training.cache_latents: true (the VAE then leaves the GPU while training)")
    if not training.cache_text_embeddings and not network.train_text_encoder:
        savers.append("training.cache_text_embeddings: true (the text encoder then leaves the GPU)")
    if training.precision == "fp32":
        savers.append("training.precision: auto (bf16, or fp16 on cards older than RTX 30xx)")
    if model is not None and model.quantize_base == "none":
        savers.append("model.quantize_base: fp8 (the base weights in half the memory, computed in bf16)")
    if model is not None and model.block_swap < block_swap_max:
        savers.append(f"model.block_swap: {model.block_swap + 12} (blocks wait in CPU RAM; slower, needs RAM)")
    if unet_optimizer_type in ("adamw", "lion"):
        savers.append(f"optimizers.unet.type: {unet_optimizer_type}8bit (optimizer state in 8 bits)")
    if training.batch_size > 1:
        savers.append(f"training.batch_size: {max(1, training.batch_size // 2)} with training.grad_accum: "
                      f"{training.grad_accum * 2} (same effective batch)")
    if network.train_text_encoder:
        savers.append("network.train_text_encoder: false")
    if network.type == "lora" and network.rank > 8:
        savers.append(f"network.rank: {max(4, network.rank // 2)}")
    savers.append(f"dataset.max_bucket_px / dataset.resolution_px lower than {dataset.resolution_px} "
                  f"(memory grows with the pixel count)")
    return savers


def describe(exc: BaseException, training=None, network=None, dataset=None, unet_optimizer_type="adamw",
             model=None, block_swap_max: int = 0):
    """(message, hint) in the user's words for `exc`."""
    if isinstance(exc, UserError):
        return exc.message, exc.hint
    if isinstance(exc, NonFiniteLoss):
        files = ", ".join(exc.files) or "(unknown)"
        return (f"Training stopped: the loss became {exc.loss} at step {exc.step} (the weights blew up). "
                f"Files in that batch: {files}.",
                "Lower the learning rate (optimizers.unet.lr, e.g. halve it), use training.precision: bf16 instead "
                "of fp16, keep training.clip_grad_norm at 1.0, and check those images open correctly. "
                "Resume from the last checkpoint or start again.")
    if is_out_of_memory(exc):
        if training is None:
            return "Out of GPU memory.", "Lower the resolution or the batch size."
        savers = oom_savers(training, network, dataset, unet_optimizer_type, model, block_swap_max)
        steps = "; ".join(f"{i}) {s}" for i, s in enumerate(savers, 1))
        return ("Out of GPU memory. The model and this batch do not fit on the card.",
                f"Turn these on, in this order, until it fits: {steps}. Close other programs using the GPU too.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        folder = Path(exc.filename).parent if exc.filename else None
        free = ""
        if folder is not None:
            try:
                free = f" ({shutil.disk_usage(folder).free / 2**30:.1f} GB free there)"
            except OSError:
                pass
        return (f"The disk is full{f': cannot write to {folder}' if folder else ''}{free}. The last complete "
                f"checkpoint and its resume state are kept.",
                "Free some space (or lower output.keep_last, or move output.dir to another drive), then resume "
                "the run.")
    if isinstance(exc, PermissionError):
        where = exc.filename or "the run folder"
        return (f"Cannot write to {where}: permission denied.",
                "Choose another output.dir, a folder you can write to, and start again (or make this one "
                "writable and resume).")
    if isinstance(exc, FileNotFoundError):
        return (f"A file is missing: {exc.filename or exc}.",
                "Check that the paths in the preset exist and that the files were not moved during training.")
    return (f"Training failed: {type(exc).__name__}: {exc}",
            "This looks like a bug or an unusual model/dataset. The traceback below helps; "
            "please include engine.log if you report it.")


def error_fields(exc: BaseException, **sections) -> dict:
    message, hint = describe(exc, **sections)
    return {"message": message, "hint": hint,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}

