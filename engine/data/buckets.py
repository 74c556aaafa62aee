"""Aspect-ratio buckets (torch-free; the trainer and the dataset doctor share them).

Images of different shapes are trained at different sizes of about the same area, so nothing is squashed and little
is cropped (NovelAI's aspect-ratio bucketing, as in kohya sd-scripts). A bucket is a (width_px, height_px) pair, both
multiples of `step_px`, with width × height ≤ resolution_px². Each image goes to the bucket whose aspect ratio is
closest (in log space, so 2:1 and 1:2 are equally far from 1:1); it is scaled to cover the bucket and centre-cropped.
"""
from __future__ import annotations

import math

Bucket = tuple[int, int]  # (width_px, height_px)


def make_buckets(resolution_px: int, min_px: int | None = None, max_px: int | None = None,
                 step_px: int = 64) -> list[Bucket]:
    """All buckets for a training resolution, sorted by aspect ratio (tallest first).

    For every width from min_px to max_px in steps of step_px, the tallest height (a multiple of step_px, within
    [min_px, max_px]) with width × height ≤ resolution_px², and the same with the sides swapped.
    Defaults: min_px = resolution_px / 2, max_px = resolution_px × 2 (kohya's 256–1024 at 512 px).
    """
    if resolution_px < step_px:
        raise ValueError(f"resolution_px ({resolution_px}) must be at least step_px ({step_px})")
    min_px = max(step_px, (min_px or resolution_px // 2) // step_px * step_px)
    max_px = (max_px or resolution_px * 2) // step_px * step_px
    max_area = resolution_px * resolution_px
    buckets = set()
    for width in range(min_px, max_px + 1, step_px):
        height = min(max_px, max_area // width // step_px * step_px)
        if height >= min_px:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets, key=lambda b: b[0] / b[1])


def assign_bucket(width_px: int, height_px: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to the image's (ties: the larger area)."""
    if width_px <= 0 or height_px <= 0:
        raise ValueError(f"image size must be positive, got {width_px}×{height_px}")
    log_ratio = math.log(width_px / height_px)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - log_ratio), -b[0] * b[1]))


def upscale_factor(width_px: int, height_px: int, bucket: Bucket) -> float:
    """How much the image is enlarged to cover its bucket (> 1: it is upscaled and will look soft)."""
    return max(bucket[0] / width_px, bucket[1] / height_px)


def bucket_of(size: tuple[int, int], dataset) -> Bucket:
    """The training size of an image of `size` under the dataset section's bucket settings."""
    if not dataset.bucketing:
        return (dataset.resolution_px, dataset.resolution_px)
    buckets = make_buckets(dataset.resolution_px, dataset.min_bucket_px, dataset.max_bucket_px,
                           dataset.bucket_step_px)
    return assign_bucket(size[0], size[1], buckets)
