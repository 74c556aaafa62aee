"""Enough free disk before a run starts: what its saves and caches will write, against what the drives have.

    check_free_space(run_dir, cache_dir, need)   # a UserError naming the folder, the free space and the need

What a run writes (estimated from the trained parameters and the dataset, before any of it is written):
  each saved network     trained params x bytes per saved value (a full fine-tune: the whole pipeline), per format,
                         for the checkpoints kept (output.keep_last; 0 keeps every one) plus the final file
  the resume state       trained params x 12 bytes (fp32 weights + two fp32 Adam moments; 8-bit states are less)
  the latent cache       images x 4 latent channels x (side / 8)^2 x 4 bytes, next to the dataset
A 10 % margin covers metadata, samples and the log.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from engine.failures import UserError

BYTES_PER_SAVED = {"fp16": 2, "bf16": 2, "fp32": 4}
STATE_BYTES_PER_PARAM = 12
MARGIN = 1.10


def saves_kept(output, total_steps: int) -> int:
    """How many network files exist at once at most: the kept checkpoints and the final one."""
    planned = (total_steps // output.save_every_n_steps) if output.save_every_n_steps else 0
    if output.save_every_n_minutes:
        planned = max(planned, 1)  # a timed save: at least one
    kept = planned if output.keep_last == 0 else min(planned, output.keep_last)
    return kept + 1


def estimate(trained_params: int, all_params: int, network, output, total_steps: int, images: int,
             resolution_px: int, cache_latents: bool) -> dict[str, int]:
    """{"run": bytes in the run folder, "cache": bytes beside the dataset}."""
    per_value = BYTES_PER_SAVED.get(output.save_precision, 4)
    if network.type == "full":
        one_save = all_params * per_value
    else:
        one_save = trained_params * per_value * max(1, len(output.formats))
    run = one_save * saves_kept(output, total_steps) + trained_params * STATE_BYTES_PER_PARAM
    cache = images * 4 * (resolution_px // 8) ** 2 * 4 if cache_latents else 0
    return {"run": math.ceil(run * MARGIN), "cache": math.ceil(cache * MARGIN)}


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(run_dir: Path, cache_dir: Path, need: dict[str, int]) -> None:
    run_at, cache_at = _existing(Path(run_dir)), _existing(Path(cache_dir))
    same_drive = os.stat(run_at).st_dev == os.stat(cache_at).st_dev
    wanted = [(run_at, need["run"] + (need["cache"] if same_drive else 0))]
    if not same_drive and need["cache"]:
        wanted.append((cache_at, need["cache"]))
    for folder, bytes_needed in wanted:
        free = shutil.disk_usage(folder).free
        if free < bytes_needed:
            raise UserError(
                f"Not enough free disk space for this run in {folder}: {free / 2**30:.1f} GB free, the run needs "
                f"about {bytes_needed / 2**30:.1f} GB (its checkpoints, resume state and latent cache).",
                "Free some space, lower output.keep_last (fewer checkpoints kept), or set output.dir to a folder "
                "on another drive.")
