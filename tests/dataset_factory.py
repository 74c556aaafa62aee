"""Generate small image datasets for tests: clean ones, and one with every problem the doctor knows planted once.

    make_clean_dataset(folder, n=20, layout="side_by_side")  -> list of image paths (names with spaces and non-ASCII)
    make_planted_dataset(folder)                             -> {finding code: the planted file, relative, '/'-separated}

Images are smooth random patterns (random 8×8 noise, enlarged) so that any two differ clearly under a perceptual hash.
Everything is seeded: the same call makes the same bytes.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

TRIGGER = "ohwx"
PLANTED_RESOLUTION_PX = 256   # the planted dataset is meant to be checked at this resolution ...
PLANTED_BATCH_SIZE = 2        # ... and this batch size (the wide image is alone in its bucket)
WORDS = "red blue green smiling standing sitting outdoors indoors beach city park window hat coat scarf".split()


def pattern(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth random picture; different seeds give clearly different perceptual hashes."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return small.resize((width, height), Image.BICUBIC).convert(mode)


def caption_for(seed: int, trigger: str = TRIGGER) -> str:
    rng = np.random.default_rng(seed + 1000)
    return f"{trigger}, a photo of a person, " + " ".join(rng.choice(WORDS, 4, replace=False))


def write_image(path: Path, image: Image.Image, **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)
    return path


def write_caption(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _dirs(folder: Path, layout: str) -> tuple[Path, Path]:
    folder = Path(folder)
    return (folder / "images", folder / "captions") if layout == "separate" else (folder, folder)


def make_clean_dataset(folder: Path, n: int = 20, layout: str = "side_by_side", trigger: str = TRIGGER,
                       sizes=((320, 320), (256, 384), (384, 256))) -> list[Path]:
    """n good images with good captions; some names have spaces and non-ASCII letters (they must not matter)."""
    image_dir, caption_dir = _dirs(folder, layout)
    paths = []
    for k in range(n):
        stem = f"Foto Ünïcode 写真 {k:02d}" if k % 3 == 0 else f"photo {k:02d}"
        ext, args = (".png", {}) if k % 4 == 0 else (".jpg", {"quality": 90})
        paths.append(write_image(image_dir / f"{stem}{ext}", pattern(k, *sizes[k % len(sizes)]), **args))
        write_caption(caption_dir / f"{stem}.txt", caption_for(k, trigger))
    return paths


def _jpeg_bytes(image: Image.Image, **args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **args)
    return buffer.getvalue()


def copy_planted_dataset(folder: Path, cache: Path) -> dict[str, str]:
    """make_planted_dataset(folder), built once in `cache` and copied (much faster for many tests)."""
    if not (cache / "planted").exists():
        make_planted_dataset(cache / "planted.tmp")
        (cache / "planted.tmp").rename(cache / "planted")
    shutil.copytree(cache / "planted", folder, dirs_exist_ok=True)
    return make_planted_dataset.expected  # the same names every time


def make_planted_dataset(folder: Path) -> dict[str, str]:
    """A side-by-side dataset of good images plus one instance of every problem; returns {code: planted file}."""
    folder = Path(folder)
    make_clean_dataset(folder, n=8)
    planted: dict[str, str] = {}

    def add(code, name, image=None, caption: str | None = "default", seed=0, **save_args):
        if image is not None:
            write_image(folder / name, image, **save_args)
        if caption is not None:
            write_caption(folder / (Path(name).stem + ".txt"), caption_for(seed) if caption == "default" else caption)
        planted[code] = name

    add("small_image", "tiny 100px.jpg", pattern(101, 100, 100), seed=101)
    add("extreme_aspect", "panorama.jpg", pattern(102, 800, 200), seed=102)   # also alone in its bucket:
    planted["small_bucket"] = "panorama.jpg"                                   # fewer than the batch size 2
    add("alpha_channel", "cutout.png", pattern(103, 256, 256, "RGBA"), seed=103)
    add("cmyk_image", "print.jpg", pattern(104, 256, 256, "CMYK"), seed=104)
    add("palette_image", "gif-like.png", pattern(105, 256, 256).convert("P"), seed=105)
    sixteen = Image.fromarray((np.asarray(pattern(106, 256, 256, "L"), dtype=np.uint16) * 257))
    add("high_bit_depth", "scan16.png", sixteen, seed=106)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    add("exif_rotated", "sideways.jpg", pattern(107, 384, 256), seed=107, exif=exif)
    add("missing_caption", "no caption.jpg", pattern(108, 256, 256), caption=None)
    add("empty_caption", "empty caption.jpg", pattern(109, 256, 256), caption="")
    add("missing_trigger", "no trigger.jpg", pattern(110, 256, 256), caption="a photo of a person at the beach")
    add("caption_too_long", "long caption.jpg", pattern(111, 256, 256),
        caption=f"{TRIGGER}, " + ", ".join(f"detail number {k} of the scene" for k in range(30)))
    add("identical_captions", "same caption a.jpg", pattern(112, 256, 256), caption=f"{TRIGGER}, a portrait")
    add("identical_captions", "same caption b.jpg", pattern(113, 256, 256), caption=f"{TRIGGER}, a portrait")
    add("caption_encoding", "café.jpg", pattern(114, 256, 256), caption=None)
    (folder / "café.txt").write_bytes(f"{TRIGGER}, caf\xe9 terrace".encode("cp1252"))
    add("near_duplicate", "near copy.jpg",
        pattern(115, 256, 256), seed=115, quality=95)
    write_image(folder / "near copy 2.jpg", pattern(115, 240, 240), quality=70)   # resized, re-encoded
    write_caption(folder / "near copy 2.txt", caption_for(1150))
    shutil.copyfile(folder / "photo 01.jpg", folder / "photo 01 copy.jpg")
    write_caption(folder / "photo 01 copy.txt", caption_for(1020))
    planted["exact_duplicate"] = "photo 01 copy.jpg"
    _plant_broken_files(folder, planted)
    make_planted_dataset.expected = dict(planted)
    return planted


def _plant_broken_files(folder: Path, planted: dict[str, str]) -> None:
    def plant(code, name, data: bytes, with_caption=True):
        (folder / name).write_bytes(data)
        if with_caption:
            write_caption(folder / (Path(name).stem + ".txt"), caption_for(200 + len(name)))
        planted[code] = name

    plant("zero_byte_image", "zero.png", b"")
    plant("unreadable_image", "not really.jpg", b"this is a text file renamed to .jpg")
    full = _jpeg_bytes(pattern(120, 256, 256), quality=90)
    plant("truncated_image", "cut off.jpg", full[: len(full) // 2])
    plant("unsupported_format", "animation.gif", b"", with_caption=False)
    pattern(121, 64, 64).save(folder / "animation.gif")
    plant("orphan_caption", "ghost.txt", caption_for(122).encode("utf-8"), with_caption=False)
    write_image(folder / "twin.jpg", pattern(123, 256, 256), quality=90)
    write_image(folder / "twin.png", pattern(124, 256, 256))
    write_caption(folder / "twin.txt", caption_for(123))
    planted["shared_caption"] = "twin.png"
    write_image(folder / "more" / "nested.jpg", pattern(125, 256, 256))
    planted["nested_images"] = "more/nested.jpg"
