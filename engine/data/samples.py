"""The training data: which samples exist, their buckets and captions, and the order they are seen in.

    collect_samples(dataset, warn) -> list[Sample]     dataset (+ regularization) images, bucketed, captions read
    split_validation(samples, dataset, validation, warn) -> (train, validation) the held-out split
    epoch_batches(samples, batch_size, seed, epoch)    the batches of one epoch: lists of sample indices
    caption_for_step(sample, dataset, rng)             caption dropout and tag shuffle, per use
    load_pixels(path, bucket, random_crop, flip, rng)  the image as a [-1, 1] tensor plus its SDXL size conditioning

The order depends only on (seed, epoch), so a resumed run that skips the batches it already did sees exactly the
batches an uninterrupted run sees. Every (image x repeats) sample appears once per epoch, in same-bucket batches
(the last batch of a bucket may be smaller) — the arithmetic of engine/data/plan.py.
Latent and text-embedding caches are in engine/data/cache.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.data.buckets import bucket_of
from engine.data.images import image_size
from engine.data.layout import find_items, read_caption

Bucket = tuple[int, int]  # (width_px, height_px)


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str          # with the trigger token, before dropout / shuffle
    size: tuple           # (width_px, height_px) as trained (EXIF rotation applied)
    bucket: Bucket
    repeats: int
    loss_weight: float    # 1, or dataset.reg_weight for regularization images


def with_trigger(caption: str, trigger: str) -> str:
    """The caption with the trigger token first, unless it already contains it."""
    caption = caption.strip()
    if not trigger or trigger in caption.replace(",", " ").split():
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def _folder_samples(folder: Path, dataset, repeats: int, loss_weight: float, trigger: str, warn,
                    by_class: bool = False) -> list[Sample]:
    samples = []
    for item in find_items(folder, dataset.caption_ext, by_class=by_class):
        try:
            size = image_size(item.image)
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never fatal
            warn(f"Skipped {item.image}: it cannot be read as an image ({type(e).__name__}: {e}).")
            continue
        caption = read_caption(item.caption) if item.caption else ""
        if by_class:  # the class name is the caption (the DiT's class conditioning); no trigger
            caption, trigger = item.label, ""
        samples.append(Sample(item.image, with_trigger(caption, trigger), size, bucket_of(size, dataset),
                              repeats, loss_weight))
    return samples


def collect_samples(dataset, warn, by_class: bool = False, captions: bool = True) -> list[Sample]:
    """Every training sample of the DatasetConfig section; `warn(message)` reports skipped files.
    by_class: the images of dataset.path's sub-folders, each captioned with its folder's name (the DiT's classes);
    captions False: a model that reads no captions (no warning about missing ones)."""
    from engine.failures import UserError

    root = Path(dataset.path).expanduser()
    if dataset.path and root.is_file():
        raise UserError(f"dataset.path: {root} is a file, not a folder.",
                        f"Set dataset.path to the folder that holds your images and captions ({root.parent}?).")
    if not dataset.path or not root.is_dir():
        raise UserError(f"dataset.path: the dataset folder does not exist: {root if dataset.path else '(empty)'}",
                        "Set dataset.path (or DATA_DIR) to the folder with your images and .txt captions.")
    samples = _folder_samples(root, dataset, dataset.repeats, 1.0, dataset.trigger, warn, by_class)
    if not samples and by_class:
        raise UserError(f"dataset.path: no usable images in sub-folders of {root} (model.dit.conditioning: class "
                        f"reads one class per sub-folder).",
                        "Put each class's images in its own sub-folder, e.g. circle/ and square/.")
    if not samples:
        raise UserError(f"dataset.path: no usable images (.jpg, .jpeg, .png, .webp) in {root}",
                        "Put the images in that folder (or in its images/ subfolder) with a .txt caption each.")
    missing = [s.image.name for s in samples if not s.caption]
    if missing and captions:
        warn(f"{len(missing)} image(s) have no caption and train with an empty one: {', '.join(missing[:5])}"
             + (" ..." if len(missing) > 5 else ""))
    if dataset.use_reg:
        reg_root = Path(dataset.reg_path).expanduser()
        if not reg_root.is_dir():
            raise UserError(f"dataset.reg_path: the regularization folder does not exist: {reg_root}",
                            "Fix dataset.reg_path or turn dataset.use_reg off.")
        # regularization images teach the class without the trigger: no trigger is added to them
        samples += _folder_samples(reg_root, dataset, dataset.reg_repeats, dataset.reg_weight, "", warn)
    return samples


def split_validation(samples: list[Sample], dataset, validation, warn) -> tuple[list[Sample], list[Sample]]:
    """(training samples, validation samples). validation.folder: its images (same layout, the trigger added, never
    trained on); else validation.fraction of the dataset's own images (not the regularization ones), picked by
    validation.seed so the split is the same every run and on resume."""
    from engine.failures import UserError

    if validation.folder:
        root = Path(validation.folder).expanduser()
        if not root.is_dir():
            raise UserError(f"validation.folder: the validation folder does not exist: {root}",
                            "Fix the path, or leave it empty (validation.fraction then holds out part of the "
                            "dataset).")
        held = _folder_samples(root, dataset, 1, 1.0, dataset.trigger, warn)
        if not held:
            raise UserError(f"validation.folder: no usable images in {root}",
                            "Put a few images with captions there (the same layout as the dataset).")
        return samples, held
    own = [i for i, s in enumerate(samples) if s.loss_weight == 1.0]
    count = round(validation.fraction * len(own))
    if validation.fraction > 0 and count == 0 and len(own) > 1:
        count = 1
    if count == 0:
        return samples, []
    if count >= len(own):
        raise UserError(f"validation.fraction: {validation.fraction} of {len(own)} images leaves none to train on.",
                        "Lower validation.fraction (0.1 is usual) or add images.")
    order = sorted(own, key=lambda i: str(samples[i].image))
    picked = set(order[k] for k in torch.randperm(len(order), generator=_generator(validation.seed))[:count].tolist())
    return [s for i, s in enumerate(samples) if i not in picked], [samples[i] for i in sorted(picked)]


def _generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (seed, epoch, ...): order never depends on earlier draws."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def epoch_batches(samples: list[Sample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of epoch `epoch`: each sample `repeats` times, shuffled within its bucket, then batches shuffled."""
    g = _generator(seed, epoch)
    by_bucket: dict[Bucket, list[int]] = {}
    for i, s in enumerate(samples):
        by_bucket.setdefault(s.bucket, []).extend([i] * s.repeats)
    batches = []
    for bucket in sorted(by_bucket):
        entries = by_bucket[bucket]
        order = torch.randperm(len(entries), generator=g).tolist()
        shuffled = [entries[j] for j in order]
        batches += [shuffled[k:k + batch_size] for k in range(0, len(shuffled), batch_size)]
    return [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]


def bucket_counts(samples: list[Sample]) -> dict[Bucket, int]:
    counts: dict[Bucket, int] = {}
    for s in samples:
        counts[s.bucket] = counts.get(s.bucket, 0) + s.repeats
    return counts


def caption_for_step(sample: Sample, dataset, g: torch.Generator) -> str:
    """Caption dropout (an empty caption) and tag shuffle (the first keep_tags tags stay) for one use."""
    if dataset.caption_dropout > 0 and torch.rand(1, generator=g).item() < dataset.caption_dropout:
        return ""
    if not dataset.shuffle_tags:
        return sample.caption
    tags = [t.strip() for t in sample.caption.split(",") if t.strip()]
    keep, rest = tags[:dataset.keep_tags], tags[dataset.keep_tags:]
    return ", ".join(keep + [rest[j] for j in torch.randperm(len(rest), generator=g).tolist()])


def step_generator(seed: int, epoch: int, batch_index: int) -> torch.Generator:
    """The generator for a batch's caption dropout, tag shuffle, random crop and flip (resume-safe)."""
    return _generator(seed, epoch, batch_index, 7)


def crop_box(size: tuple, bucket: Bucket, random_crop: bool, g: torch.Generator | None):
    """(scaled_w, scaled_h, left, top): the image scaled to cover the bucket, and where the bucket is cut out."""
    w, h = size
    scale = max(bucket[0] / w, bucket[1] / h)
    sw, sh = max(bucket[0], round(w * scale)), max(bucket[1], round(h * scale))
    free_x, free_y = sw - bucket[0], sh - bucket[1]
    if random_crop and g is not None:
        left = int(torch.randint(0, free_x + 1, (1,), generator=g)) if free_x else 0
        top = int(torch.randint(0, free_y + 1, (1,), generator=g)) if free_y else 0
    else:
        left, top = free_x // 2, free_y // 2
    return sw, sh, left, top


def load_pixels(path: Path, size: tuple, bucket: Bucket, random_crop=False, flip=False, g=None):
    """(pixels [3, H, W] float32 in [-1, 1], size_cond [6]) for one image.

    size_cond = (original_h, original_w, crop_top, crop_left, target_h, target_w), SDXL's micro-conditioning.
    Raises on an unreadable file; the caller skips it with a warning.
    """
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        sw, sh, left, top = crop_box(size, bucket, random_crop, g)
        im = im.resize((sw, sh), Image.Resampling.LANCZOS).crop((left, top, left + bucket[0], top + bucket[1]))
        if flip and g is not None and torch.rand(1, generator=g).item() < 0.5:
            im = ImageOps.mirror(im)
        array = np.asarray(im, dtype=np.float32)
    pixels = torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0
    size_cond = torch.tensor([size[1], size[0], top, left, bucket[1], bucket[0]], dtype=torch.float32)
    return pixels, size_cond


def tag_frequency(samples, dataset_path: str) -> dict:
    """{dataset folder name: {tag: count}}: sd-scripts' ss_tag_frequency, which A1111 shows on the LoRA card."""
    counts: dict[str, int] = {}
    for s in samples:
        for tag in (t.strip() for t in s.caption.split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return {Path(dataset_path).name: counts}
