"""Facts about one image file, read for the dataset doctor (torch-free; engine.dataset_doctor.check_dataset uses it).

    info = probe_image(Path("photo.jpg"))            # ImageInfo: size as displayed, mode, alpha, bit depth, hashes
    infos = probe_all(paths, deep=False)             # many files in parallel threads; headers only

A file that cannot be used is not an exception: ImageInfo.problem says why (zero_byte | unreadable | truncated).
Images are probed in parallel threads (Pillow releases the GIL while decoding); JPEGs decode at 1/8 size (draft
mode), which still reads every byte, so truncated files are caught at a fraction of the cost. deep=False reads
headers only and falls back to a cheap end-marker test for truncation.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

EXIF_ORIENTATION_TAG = 0x0112


@dataclass
class ImageInfo:
    """What probe_image found in one file; `problem` is set when the file cannot be trained on."""

    path: Path
    n_bytes: int = 0
    sha256: str | None = None
    problem: str | None = None     # zero_byte | unreadable | truncated
    detail: str = ""
    format: str | None = None
    mode: str | None = None
    width: int | None = None       # as displayed (EXIF orientation applied)
    height: int | None = None
    orientation: int = 1
    has_alpha: bool = False
    bit_depth: int = 8
    phash: int | None = None
    mean_rgb: tuple | None = None  # average colour: the greyscale hash alone calls a red and a blue circle the same


def _png_bit_depth(data: bytes) -> int:
    # IHDR is always the first chunk: 8-byte signature, 4 length, 4 type, 4 width, 4 height, then 1 byte depth.
    return data[24] if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 else 8


def _has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _orientation(im) -> int:
    """The EXIF orientation (1 = upright). PNG's getexif() would decode the whole image to look for a late
    eXIf chunk, so for PNG only the header's EXIF (if any) is read."""
    from PIL import Image

    if im.format == "PNG":
        exif = Image.Exif()
        if "exif" in im.info:
            exif.load(im.info["exif"])
    else:
        exif = im.getexif()
    return int(exif.get(EXIF_ORIENTATION_TAG, 1) or 1)


def probe_image(path: Path, deep: bool = True) -> ImageInfo:
    """Header facts of one image; with deep=True also decode it (truncation) and take its perceptual hash."""
    from PIL import Image

    data = path.read_bytes()
    info = ImageInfo(path=path, n_bytes=len(data))
    if not data:
        info.problem = "zero_byte"
        return info
    info.sha256 = hashlib.sha256(data).hexdigest()
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises several types for files it cannot identify
        info.problem, info.detail = "unreadable", str(exc)
        return info
    with im:
        info.format, info.mode = im.format, im.mode
        info.width, info.height = im.size
        info.orientation = _orientation(im)
        if info.orientation in (5, 6, 7, 8):  # stored sideways; shown turned by 90°
            info.width, info.height = info.height, info.width
        info.has_alpha = _has_alpha(im)
        info.bit_depth = 16 if im.mode.startswith("I;16") or _png_bit_depth(data) == 16 else 8
        if deep:
            _decode_and_hash(im, info)
        elif _end_marker_missing(data, im.format):
            info.problem, info.detail = "truncated", "the file ends before the image does"
    return info


def _end_marker_missing(data: bytes, image_format: str | None) -> bool:
    """Cheap truncation test without decoding: JPEG must end with EOI (FF D9), PNG with an IEND chunk."""
    tail = data.rstrip(b"\x00")[-16:]  # some cameras pad files with zeros
    if image_format == "JPEG":
        return not tail.endswith(b"\xff\xd9")
    if image_format == "PNG":
        return b"IEND" not in tail
    return False


def _decode_and_hash(im, info: ImageInfo) -> None:
    import imagehash

    try:
        im.draft("RGB", (64, 64))  # JPEG only: decode at reduced size; a no-op for other formats
        im.load()
    except Exception as exc:  # truncated or corrupt data after a valid header
        info.problem, info.detail = "truncated", str(exc)
        return
    grey = _grey_8bit(im)
    small = grey.reduce(max(1, min(grey.size) // 128))  # the hash looks at 32×32 anyway; shrink cheaply first
    info.phash = int(str(imagehash.phash(small)), 16)
    if not im.mode.startswith("I"):
        info.mean_rgb = im.convert("RGB").reduce(max(1, min(im.size) // 16)).resize((1, 1)).getpixel((0, 0))


def _grey_8bit(im):
    """8-bit greyscale for hashing; 16-bit images are scaled down (convert() would clip them to white)."""
    if im.mode.startswith("I"):
        import numpy as np
        from PIL import Image

        values = np.asarray(im, dtype=np.uint32)
        return Image.fromarray((values >> 8 if values.max() > 255 else values).astype(np.uint8))
    return im.convert("L")


def probe_all(paths: list[Path], deep: bool = True, workers: int | None = None) -> list[ImageInfo]:
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: probe_image(p, deep), paths))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as trained: reads only the header, and swaps the sides of EXIF-rotated photos."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
