"""The arithmetic of a run, shared by the dry run and the trainer (torch-free; no model is loaded).

An epoch shows every image `repeats` times (and every regularization image `reg_repeats` times), in batches that
hold one bucket each; the last batch of a bucket may be smaller. So with bucket sample counts n_b:
    batches_per_epoch = Σ_b ceil(n_b / batch_size)      steps_per_epoch = ceil(batches_per_epoch / grad_accum)
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.data.buckets import bucket_of
from engine.data.images import image_size
from engine.data.layout import find_items

Bucket = tuple[int, int]


def batches_per_epoch(bucket_counts: dict[Bucket, int], batch_size: int) -> int:
    return sum(math.ceil(n / batch_size) for n in bucket_counts.values() if n > 0)


def steps_per_epoch(batches: int, grad_accum: int) -> int:
    return math.ceil(batches / grad_accum)


def total_steps(max_steps: int, max_epochs: int, steps_in_epoch: int) -> int:
    """max_steps wins when set; otherwise max_epochs whole epochs."""
    return max_steps if max_steps > 0 else max_epochs * steps_in_epoch


def cadence(every_n: int, last: int, start: int = 1) -> list[int]:
    """The steps (or epochs) start..last that are multiples of every_n; [] when every_n is 0."""
    return [] if every_n <= 0 else [s for s in range(start, last + 1) if s % every_n == 0]


@dataclass
class Plan:
    images: int
    reg_images: int
    unreadable: list = field(default_factory=list)
    bucket_counts: dict = field(default_factory=dict)  # "WxH" -> samples per epoch
    samples_per_epoch: int = 0
    batches_per_epoch: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    epochs: float = 0.0
    checkpoint_steps: list = field(default_factory=list)
    checkpoint_every_n_minutes: float = 0.0
    sample_steps: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def count_buckets(folder: str, caption_ext: str, repeats: int, dataset, counts: Counter, unreadable: list) -> int:
    """Add the folder's samples per epoch to `counts` by bucket; return its number of readable images."""
    n = 0
    for item in find_items(Path(folder), caption_ext):
        try:
            size = image_size(item.image)
        except Exception:  # the trainer skips such files with a warning; the plan counts what it will train
            unreadable.append(str(item.image))
            continue
        counts[bucket_of(size, dataset)] += repeats
        n += 1
    return n


def make_plan(dataset, training, sampling, output) -> Plan:
    """The plan of a run from the preset's sections (reads image headers, not pixels)."""
    counts: Counter = Counter()
    unreadable: list = []
    images = count_buckets(dataset.path, dataset.caption_ext, dataset.repeats, dataset, counts, unreadable)
    reg = 0
    if dataset.use_reg and dataset.reg_path:
        reg = count_buckets(dataset.reg_path, dataset.caption_ext, dataset.reg_repeats, dataset, counts, unreadable)
    batches = batches_per_epoch(counts, training.batch_size)
    per_epoch = steps_per_epoch(batches, training.grad_accum)
    total = total_steps(training.max_steps, training.max_epochs, per_epoch)
    epoch_ends = [e * per_epoch for e in cadence(output.save_every_n_epochs, math.ceil(total / per_epoch))] \
        if per_epoch else []
    # the last step writes the final LoRA into the run folder instead of a numbered checkpoint
    checkpoints = sorted(s for s in set(cadence(output.save_every_n_steps, total)) | set(epoch_ends) if s < total)
    sample_steps = cadence(sampling.every_n_steps, total)
    if sampling.prompts and total and total not in sample_steps:
        sample_steps.append(total)  # samples are always rendered at the end
    return Plan(images=images, reg_images=reg, unreadable=unreadable,
                bucket_counts={f"{w}x{h}": n for (w, h), n in sorted(counts.items())},
                samples_per_epoch=sum(counts.values()), batches_per_epoch=batches, steps_per_epoch=per_epoch,
                total_steps=total, epochs=round(total / per_epoch, 2) if per_epoch else 0.0,
                checkpoint_steps=checkpoints, checkpoint_every_n_minutes=output.save_every_n_minutes,
                sample_steps=sample_steps if sampling.prompts else [])


def describe(plan: Plan) -> str:
    """The plan in a few lines a person reads before a long run."""
    lines = [
        f"images: {plan.images} (+ {plan.reg_images} regularization)"
        + (f", {len(plan.unreadable)} unreadable and skipped" if plan.unreadable else ""),
        f"samples per epoch: {plan.samples_per_epoch} in buckets "
        + ", ".join(f"{b}: {n}" for b, n in plan.bucket_counts.items()),
        f"batches per epoch: {plan.batches_per_epoch}; optimizer steps per epoch: {plan.steps_per_epoch}",
        f"total steps: {plan.total_steps} (= {plan.epochs} epochs)",
        "checkpoints at steps: " + (_short(plan.checkpoint_steps) or "none by steps/epochs")
        + (f"; and every {plan.checkpoint_every_n_minutes:g} min" if plan.checkpoint_every_n_minutes else "")
        + "; the final LoRA is always saved",
        "samples at steps: " + (_short(plan.sample_steps) or "none (no prompts)"),
    ]
    return "\n".join(lines)


def _short(steps: list[int], keep: int = 12) -> str:
    if len(steps) <= keep:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:keep // 2])) + f", … ({len(steps)} in all) …, " + \
        ", ".join(map(str, steps[-2:]))
