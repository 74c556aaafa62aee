"""Enough free disk before a run starts: what its saves and caches will write, against what the drives have.

    warning = check_free_space(run_dir, cache_dir, need)   # a UserError naming the folder, free space and need
    warning = check_disk_before_run(run_dir, preset, comps, trainables)   # the same, estimated from a run's set-up

What a run writes (estimated from the trained parameters and the dataset, before any of it is written):
  each saved network     trained params x bytes per saved value (a full fine-tune: the whole pipeline), per format,
                         for the checkpoints kept (output.keep_last; 0 keeps every one) plus the final file
  the resume state       trained params x 12 bytes (fp32 weights + two fp32 Adam moments; 8-bit states are less)
  the latent cache       images x 4 latent channels x (side / 8)^2 x 4 bytes, next to the dataset; only a warning
                         when it does not fit (the latents then stay in memory)
Files a resumed run (or an earlier run's cache) already has are counted as there. A 10 % margin covers metadata,
samples and the log.
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
    """{"run": bytes the run folder will hold at most, "one_save": one network file (all formats) plus the resume
    state (what an atomic rewrite needs beside the old copies), "cache": the latent cache beside the dataset}."""
    per_value = BYTES_PER_SAVED.get(output.save_precision, 4)
    if network.type == "full":
        one_save = all_params * per_value
    else:
        one_save = trained_params * per_value * max(1, len(output.formats))
    state = trained_params * STATE_BYTES_PER_PARAM
    cache = images * 4 * (resolution_px // 8) ** 2 * 4 if cache_latents else 0
    return {"run": math.ceil((one_save * saves_kept(output, total_steps) + state) * MARGIN),
            "one_save": math.ceil((one_save + state) * MARGIN), "cache": math.ceil(cache * MARGIN)}


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def bytes_in(*folders: Path) -> int:
    """What is already there (a resumed run's checkpoints and state, a cache built by an earlier run)."""
    return sum(f.stat().st_size for folder in folders if folder.is_dir() for f in folder.rglob("*") if f.is_file())


def check_free_space(run_dir: Path, cache_dir: Path, need: dict[str, int]) -> str | None:
    """A UserError when the run folder's drive cannot hold the run's saves; a warning (returned) when the dataset's
    drive cannot hold the latent cache: the trainer then keeps the latents in memory instead."""
    run_dir, cache_dir = Path(run_dir), Path(cache_dir)
    # files a resumed run already has are replaced, not added to; one save and one state are always written anew
    run_need = max(need["run"] - bytes_in(run_dir / "checkpoints", run_dir / "state"), need["one_save"])
    cache_need = max(need["cache"] - bytes_in(cache_dir), 0)
    try:
        run_at, cache_at = _existing(run_dir), _existing(cache_dir)
        same_drive = os.stat(run_at).st_dev == os.stat(cache_at).st_dev
        cache_free = shutil.disk_usage(cache_at).free
    except OSError:  # the dataset's drive is not there (unplugged): the dataset check says so in its words
        same_drive, cache_free, cache_need = False, 0, 0
    run_free = shutil.disk_usage(_existing(run_dir)).free
    if run_free < run_need:
        raise UserError(
            f"Not enough free disk space for this run in {run_dir}: {run_free / 2**30:.1f} GB free, the run needs "
            f"about {run_need / 2**30:.1f} GB (its checkpoints and resume state).",
            "Free some space, lower output.keep_last (fewer checkpoints kept), or set output.dir to a folder "
            "on another drive.")
    room_for_cache = (run_free - run_need) if same_drive else cache_free
    if cache_need and room_for_cache < cache_need:
        return (f"The latent cache needs about {cache_need / 2**30:.1f} GB beside the dataset ({cache_dir}), and "
                f"that drive has {max(room_for_cache, 0) / 2**30:.1f} GB to spare: latents the cache cannot hold "
                f"are kept in memory instead (more RAM, same result).")
    return None


def check_disk_before_run(run_dir: Path, preset, comps, trainables: dict) -> str | None:
    """Refuse a run whose saves cannot fit the drive, before caching and training write anything; a warning
    (returned) when only the latent cache does not fit."""
    from engine.data.cache import cache_dir_for
    from engine.data.layout import find_items
    from engine.data.plan import total_steps

    trained = sum(p.numel() for modules in trainables.values() for m in modules for p in m.parameters()
                  if p.requires_grad)
    everything = sum(p.numel() for m in (comps.denoiser, comps.vae, *comps.text_encoders) for p in m.parameters())
    d, t = preset.dataset, preset.training
    images = len(find_items(Path(d.path).expanduser(), d.caption_ext)) if Path(d.path).expanduser().is_dir() else 0
    # max_epochs runs: about one save per epoch is the most that cadence gives for the estimate
    steps = total_steps(t.max_steps, t.max_epochs, max(1, images // max(1, t.batch_size * t.grad_accum)))
    need = estimate(trained, everything, preset.network, preset.output, steps, images, d.resolution_px,
                    t.cache_latents)  # buckets keep about the resolution's pixel count
    return check_free_space(run_dir, cache_dir_for(d.path), need)
