"""The arithmetic of a run, shared by the dry run and the trainer (torch-free; no model is loaded).

An epoch shows every image `repeats` times (and every regularization image `reg_repeats` times), in batches that
hold one bucket each; the last batch of a bucket may be smaller. So with bucket sample counts n_b:
    batches_per_epoch = Σ_b ceil(n_b / batch_size)
    steps_per_epoch = ceil(batches_per_epoch / (grad_accum × num_gpus))
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


def reflow_steps_per_iteration(training, processes: int = 1) -> int:
    """Optimizer steps of one reflow iteration's training: reflow_train_epochs epochs of reflow_gen_batches batches
    (engine/training/modes/reflow.py)."""
    return training.reflow_train_epochs * math.ceil(training.reflow_gen_batches / (training.grad_accum * processes))


def total_reflow_steps(training, processes: int = 1) -> int:
    return training.reflow_steps * reflow_steps_per_iteration(training, processes) if training.reflow_steps else 0


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


def count_buckets(folder: str, caption_ext: str, repeats: int, dataset, counts: Counter, unreadable: list,
                  by_class: bool = False) -> int:
    """Add the folder's samples per epoch to `counts` by bucket; return its number of readable images.
    by_class: the images of its sub-folders (the DiT's classes)."""
    n = 0
    for item in find_items(Path(folder), caption_ext, by_class=by_class):
        try:
            size = image_size(item.image)
        except Exception:  # the trainer skips such files with a warning; the plan counts what it will train
            unreadable.append(str(item.image))
            continue
        counts[bucket_of(size, dataset)] += repeats
        n += 1
    return n


def count_arrays(folder: str, repeats: int, counts: Counter, target_array: str, aliases) -> int:
    """The .npz files of a DiT on condition channels, each in the bucket of its target array's own size."""
    from engine.data.npz import array_size, npz_files, parse_aliases  # numpy and torch: only for .npz datasets

    files = npz_files(Path(folder).expanduser()) if Path(folder).expanduser().is_dir() else []
    for path in files:
        counts[array_size(path, target_array, parse_aliases(aliases))] += repeats
    return len(files)


def dataset_conditioning(model) -> str | None:
    """How the trainer reads dataset.path: None for captioned images; the DiT's model.dit.conditioning (none,
    class: one sub-folder per class, channels: .npz files)."""
    from engine.models.families import capabilities

    return None if capabilities(model.family).base_model else model.dit.conditioning


def plan_of(preset) -> "Plan":
    return make_plan(preset.dataset, preset.training, preset.sampling, preset.output,
                     dataset_conditioning(preset.model), preset.model.dit)


def make_plan(dataset, training, sampling, output, conditioning: str | None = None, dit=None) -> Plan:
    """The plan of a run from the preset's sections (reads image headers, not pixels); conditioning as
    dataset_conditioning says (dit: model.dit, for the .npz array names)."""
    counts: Counter = Counter()
    unreadable: list = []
    if conditioning == "channels":
        images = count_arrays(dataset.path, dataset.repeats, counts, dit.target_array, dit.array_aliases)
    else:
        images = count_buckets(dataset.path, dataset.caption_ext, dataset.repeats, dataset, counts, unreadable,
                               by_class=conditioning == "class")
    reg = 0
    if dataset.use_reg and dataset.reg_path:
        reg = count_buckets(dataset.reg_path, dataset.caption_ext, dataset.reg_repeats, dataset, counts, unreadable)
    batches = batches_per_epoch(counts, training.batch_size)
    per_epoch = steps_per_epoch(batches, training.grad_accum * training.num_gpus)  # each GPU its own batches
    total = total_steps(training.max_steps, training.max_epochs, per_epoch) + total_reflow_steps(training,
                                                                                                   training.num_gpus)
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
