"""Rewards computed from the pixels alone: no model, no settings.

    jpeg_compressibility(images, prompts)    -> -(JPEG size in kB)   DDPO's compressibility (smooth, flat images)
    jpeg_incompressibility(images, prompts)  -> +(JPEG size in kB)   DDPO's incompressibility (busy, detailed ones)
    brightness(images, prompts)              -> mean pixel value in [0, 1]

The JPEG rewards are DDPO's (Black et al. 2023): the image saved at quality 95 into memory, its size in kB
(bytes / 1000). brightness is here for demos and tests: a reward a tiny model learns in a few steps.
"""
from __future__ import annotations

import io

JPEG_QUALITY = 95  # DDPO's setting; the size, not the look, is what is rewarded


def jpeg_size_kb(image) -> float:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.tell() / 1000


def jpeg_compressibility(images, prompts) -> list[float]:
    return [-jpeg_size_kb(image) for image in images]


def jpeg_incompressibility(images, prompts) -> list[float]:
    return [jpeg_size_kb(image) for image in images]


def brightness(images, prompts) -> list[float]:
    from PIL import ImageStat

    # every band has the same pixel count, so the mean of the band means is the mean over all values
    return [sum(ImageStat.Stat(image.convert("RGB")).mean) / 3 / 255 for image in images]
