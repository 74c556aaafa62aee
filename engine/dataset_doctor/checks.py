"""The dataset doctor's checks: each one `(scan) -> list[Finding]`, listed in CHECKS in the order the user should
deal with them. The scan gathers, once, everything they look at (files, image facts, captions, buckets)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.captions.edit import trigger_pattern
from engine.data import layout
from engine.data.buckets import upscale_factor
from engine.data.images import ImageInfo
from engine.dataset_doctor.report import Finding

MIN_IMAGES, MAX_IDENTITY_IMAGES = 15, 30          # the FLUX identity guide: 15 minimum, 15–30 recommended
EXTREME_ASPECT = 2.5                               # wider or taller than 2.5:1
UPSCALE_WARN = 1.1                                 # enlarged by more than 10 % to fill its bucket
NEAR_DUPLICATE_BITS = 4                            # perceptual hashes (64 bits) this close look the same
NEAR_DUPLICATE_COLOUR = 24                         # ... if their average colours differ by at most this (0-255)


@dataclass
class Scan:
    """Everything the checks look at, gathered once."""

    root: Path
    items: list[layout.Item]
    infos: list[ImageInfo]
    captions: dict[Path, str]       # image path -> caption text (only images that have a caption file)
    assigned: dict[Path, tuple[int, int]]
    trigger: str | None
    resolution_px: int
    batch_size: int
    token_limit: int

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def good(self) -> list[ImageInfo]:
        return [i for i in self.infos if i.problem is None]


def names(paths: list[str], limit: int = 4) -> str:
    """'a.jpg, b.jpg and 3 more' — short enough for one line of the GUI."""
    shown = ", ".join(Path(p).name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def estimate_clip_tokens(text: str) -> int:
    """About how many CLIP tokens a caption takes, without a tokenizer (no download, no torch).

    CLIP splits letters, single digits and punctuation runs; common words are one token and long or made-up words
    several (about one per 7 letters). The estimate is close for English captions and errs on the long side.
    """
    pieces = re.findall(r"[^\W\d_]+|\d|[^\w\s]+", text.lower())
    return sum(1 + (len(p) - 1) // 7 if p[0].isalpha() else 1 for p in pieces)


# ---------------------------------------------------------------------------------------------- the checks
def check_image_count(scan: Scan) -> list[Finding]:
    n = len(scan.items)
    if n == 0:
        nested = [scan.rel(p) for p in layout.nested_images(scan.root)]
        where = f" ({len(nested)} are in subfolders, which are not read: {names(nested)})" if nested else ""
        return [Finding("no_images", "error", f"No training images found in {scan.root}{where}.",
                        "Put your JPG, PNG or WebP images directly in the dataset folder, or in an 'images' "
                        "subfolder with the captions in a 'captions' subfolder.", nested)]
    if n < MIN_IMAGES:
        return [Finding("too_few_images", "warning", f"Only {_plural(n, 'image')}; at least {MIN_IMAGES} are "
                        "recommended.", "Add more photos (15–30 for a person or character) with varied angles, "
                        "lighting and framing; with few images the LoRA tends to copy them.")]
    if n > MAX_IDENTITY_IMAGES:
        return [Finding("many_images", "info", f"{n} images. For a person or character, 15–30 good ones are "
                        "recommended; more is fine for a style or concept.",
                        "For an identity LoRA, keep the sharpest, most varied images rather than all of them.")]
    return []


def check_nested_images(scan: Scan) -> list[Finding]:
    nested = [scan.rel(p) for p in layout.nested_images(scan.root)] if scan.items else []
    if not nested:
        return []
    return [Finding("nested_images", "warning", f"{_plural(len(nested), 'image')} in subfolders will not be used: "
                    f"{names(nested)}.", "Move them up into the image folder if you want to train on them.", nested)]


def check_unsupported(scan: Scan) -> list[Finding]:
    files = [scan.rel(p) for p in layout.unsupported_images(scan.root)]
    if not files:
        return []
    return [Finding("unsupported_format", "warning", f"{_plural(len(files), 'file')} in a format Easel does not "
                    f"train on: {names(files)}.", "Convert them to JPG or PNG (any image editor can), or remove them "
                    "from the folder.", files, "set_aside", files)]


def check_broken_images(scan: Scan) -> list[Finding]:
    texts = {"zero_byte": ("is empty (0 bytes)", "were empty (0 bytes)"),
             "unreadable": ("is not an image Easel can open", "are not images Easel can open"),
             "truncated": ("is cut off (truncated or corrupt)", "are cut off (truncated or corrupt)")}
    found = []
    for code, (one, many) in texts.items():
        files = [scan.rel(i.path) for i in scan.infos if i.problem == code]
        if files:
            what = one if len(files) == 1 else many
            found.append(Finding(f"{code}_image", "error", f"{names(files)} {what}.",
                                 "Copy the file again from the original source, or set it aside.", files,
                                 "set_aside", files))
    return found


def check_missing_captions(scan: Scan) -> list[Finding]:
    files = [scan.rel(i.image) for i in scan.items if i.caption is None]
    if not files:
        return []
    first = next(i.image for i in scan.items if i.caption is None)
    example = scan.rel(layout.caption_path_for(scan.root, first))
    return [Finding("missing_caption", "error", f"{_plural(len(files), 'image')} without a caption file: "
                    f"{names(files)}.", f"Each image needs a .txt file with the same name (e.g. {example}). Create "
                    "them from the trigger word, or caption them automatically on the Captions tab.", files,
                    "create_missing_captions", files)]


def check_caption_text(scan: Scan) -> list[Finding]:
    empty = [scan.rel(p) for p, text in scan.captions.items() if not text.strip()]
    not_utf8 = [i for i in scan.items if i.caption and not layout.is_utf8(i.caption)]
    found = []
    if empty:
        found.append(Finding("empty_caption", "warning", f"{_plural(len(empty), 'caption')} empty: {names(empty)}.",
                             "Write what is in each picture, starting with your trigger word, or caption them "
                             "automatically on the Captions tab.", empty))
    if not_utf8:
        captions = [scan.rel(i.caption) for i in not_utf8]
        found.append(Finding("caption_encoding", "warning", f"{_plural(len(captions), 'caption file')} not saved "
                             f"as UTF-8: {names(captions)}. Accented letters may come out garbled.",
                             "Open them in a text editor and save them as UTF-8.", [scan.rel(i.image) for i in not_utf8]))
    return found


def check_trigger(scan: Scan) -> list[Finding]:
    if not scan.trigger:
        return []
    pattern = trigger_pattern(scan.trigger)
    files = [scan.rel(p) for p, text in scan.captions.items() if text.strip() and not pattern.search(text)]
    if not files:
        return []
    return [Finding("missing_trigger", "warning", f"{_plural(len(files), 'caption')} without the trigger word "
                    f"'{scan.trigger}': {names(files)}.", "Put the trigger word in every caption (usually first), "
                    "so the LoRA learns to link it to your subject.", files, "add_trigger", files)]


def check_identical_captions(scan: Scan) -> list[Finding]:
    groups: dict[str, list[str]] = {}
    for path, text in scan.captions.items():
        if text.strip():
            groups.setdefault(" ".join(text.lower().split()), []).append(scan.rel(path))
    found = []
    for text, files in groups.items():
        if len(files) > 1:
            found.append(Finding("identical_captions", "warning", f"{len(files)} images have the same caption "
                                 f"\"{text[:60]}\": {names(files)}.", "Describe what differs in each picture "
                                 "(pose, clothes, background, light); identical captions teach the LoRA less.",
                                 files))
    return found


def check_caption_length(scan: Scan) -> list[Finding]:
    usable = scan.token_limit - 2  # the start and end markers take two of the text encoder's tokens
    files = [scan.rel(p) for p, text in scan.captions.items() if estimate_clip_tokens(text) > usable]
    if not files:
        return []
    return [Finding("caption_too_long", "warning", f"{_plural(len(files), 'caption')} longer than the text "
                    f"encoder reads (about {usable} tokens): {names(files)}. The end is cut off in training.",
                    "Shorten them: keep the trigger word and the most important details first.", files)]


def check_duplicates(scan: Scan) -> list[Finding]:
    by_hash: dict[str, list[ImageInfo]] = {}
    for info in scan.good():
        by_hash.setdefault(info.sha256, []).append(info)
    found = []
    for group in (g for g in by_hash.values() if len(g) > 1):
        group.sort(key=lambda i: (len(i.path.name), i.path.name))  # keep 'photo.jpg' rather than 'photo copy.jpg'
        files = [scan.rel(i.path) for i in group]
        found.append(Finding("exact_duplicate", "warning", f"{names(files)} are the same image ({len(files)} "
                             "copies).", "Keep one: set the other copies aside (they are moved to _set_aside/, "
                             "not deleted).", files, "set_aside", files[1:]))
    return found + _near_duplicates(scan, [g[0] for g in by_hash.values()])


def _near_duplicates(scan: Scan, distinct: list[ImageInfo]) -> list[Finding]:
    import numpy as np

    infos = [i for i in distinct if i.phash is not None]  # one per exact-duplicate group
    hashes = np.array([i.phash for i in infos], dtype=np.uint64)
    parent = list(range(len(infos)))  # union-find: near duplicates chain into one group

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for k in range(len(infos) - 1):
        close = np.nonzero(np.bitwise_count(hashes[k + 1:] ^ hashes[k]) <= NEAR_DUPLICATE_BITS)[0]
        for j in close + k + 1:
            if _similar_colour(infos[k], infos[int(j)]):
                parent[root(int(j))] = root(k)
    groups: dict[int, list[str]] = {}
    for k, info in enumerate(infos):
        groups.setdefault(root(k), []).append(scan.rel(info.path))
    return [Finding("near_duplicate", "warning", f"{names(files)} look almost the same.",
                    "Near-identical shots make the LoRA copy that picture; keep the best one and set the others "
                    "aside.", files, "set_aside", files[1:]) for files in groups.values() if len(files) > 1]


def _similar_colour(a: ImageInfo, b: ImageInfo) -> bool:
    if a.mean_rgb is None or b.mean_rgb is None:
        return True
    return max(abs(x - y) for x, y in zip(a.mean_rgb, b.mean_rgb)) <= NEAR_DUPLICATE_COLOUR


def check_sizes(scan: Scan) -> list[Finding]:
    small, extreme = [], []
    for info in scan.good():
        bucket = scan.assigned[info.path]
        if upscale_factor(info.width, info.height, bucket) > UPSCALE_WARN:
            small.append(scan.rel(info.path))
        if max(info.width / info.height, info.height / info.width) > EXTREME_ASPECT:
            extreme.append(scan.rel(info.path))
    found = []
    if small:
        found.append(Finding("small_image", "warning", f"{_plural(len(small), 'image')} smaller than the "
                             f"{scan.resolution_px} px training size: {names(small)}. They will be enlarged and "
                             "look soft.", "Use larger originals, or train at a lower resolution.", small))
    if extreme:
        found.append(Finding("extreme_aspect", "warning", f"{_plural(len(extreme), 'image')} very wide or tall "
                             f"(more than {EXTREME_ASPECT:g}:1): {names(extreme)}.", "Crop them closer to the "
                             "subject; in such a strip the subject ends up small.", extreme))
    return found


def check_buckets(scan: Scan) -> list[Finding]:
    counts = bucket_counts(scan)
    if not counts:
        return []
    listing = ", ".join(f"{key} ({n})" for key, n in counts.items())
    found = [Finding("buckets", "info", f"At {scan.resolution_px} px your images fall into "
                     f"{_plural(len(counts), 'shape bucket')}: {listing}.",
                     "Each batch takes images from one bucket.")]
    if scan.batch_size > 1:
        for key, n in counts.items():
            if n < scan.batch_size:
                files = [scan.rel(p) for p, b in scan.assigned.items() if f"{b[0]}x{b[1]}" == key]
                found.append(Finding("small_bucket", "warning", f"Bucket {key} has {_plural(n, 'image')}, fewer "
                                     f"than the batch size {scan.batch_size}: {names(files)}.",
                                     "These train in smaller batches (uneven steps). Add images of this shape, crop "
                                     "them to a common shape, or use batch size 1.", files))
    return found


def bucket_counts(scan: Scan) -> dict[str, int]:
    counts: dict[str, int] = {}
    for bucket in sorted(scan.assigned.values(), key=lambda b: b[0] / b[1]):
        key = f"{bucket[0]}x{bucket[1]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def check_spread(scan: Scan) -> list[Finding]:
    good = scan.good()
    if not good:
        return []
    shapes = {"portrait": 0, "square": 0, "landscape": 0}
    for i in good:
        ratio = i.width / i.height
        shapes["portrait" if ratio < 0.9 else "landscape" if ratio > 1.1 else "square"] += 1
    sizes = sorted(good, key=lambda i: i.width * i.height)
    text = ", ".join(f"{n} {name}" for name, n in shapes.items() if n)
    message = (f"Shapes: {text}. Sizes from {sizes[0].width}×{sizes[0].height} to "
               f"{sizes[-1].width}×{sizes[-1].height}.")
    hint = ("Good variety helps: mix close-up portraits with mid and full-body shots, angles and lighting."
            if sum(1 for n in shapes.values() if n) == 1 else "A mix of shapes and framings; fine.")
    return [Finding("shape_spread", "info", message, hint)]


def check_exif_rotation(scan: Scan) -> list[Finding]:
    files = [scan.rel(i.path) for i in scan.good() if i.orientation not in (0, 1)]
    if not files:
        return []
    return [Finding("exif_rotated", "warning", f"{_plural(len(files), 'image')} stored sideways or flipped, "
                    f"turned upright only by a camera tag (EXIF): {names(files)}.", "Apply the rotation to the "
                    "pixels so every tool sees the image upright (the original is kept).", files,
                    "apply_exif_rotation", files)]


def check_color_modes(scan: Scan) -> list[Finding]:
    kinds = {
        "alpha_channel": (lambda i: i.has_alpha, "with transparency", "Transparent areas train as black or noise. "
                          "Flatten them onto a white background.", "flatten_alpha"),
        "cmyk_image": (lambda i: i.mode == "CMYK", "in CMYK colours (print)", "Convert them to RGB.",
                       "convert_to_rgb"),
        "high_bit_depth": (lambda i: i.bit_depth == 16, "with 16 bits per channel", "Convert them to 8-bit RGB.",
                           "convert_to_rgb"),
        "palette_image": (lambda i: i.mode == "P" and not i.has_alpha, "with a limited colour palette",
                          "Convert them to RGB.", "convert_to_rgb"),
    }
    found = []
    for code, (test, what, hint, fix) in kinds.items():
        files = [scan.rel(i.path) for i in scan.good() if test(i)]
        if files:
            found.append(Finding(code, "warning", f"{_plural(len(files), 'image')} {what}: {names(files)}.",
                                 hint + " The original is kept.", files, fix, files))
    return found


def check_orphans(scan: Scan) -> list[Finding]:
    files = [scan.rel(p) for p in layout.orphan_captions(scan.root)]
    shared: dict[str, list[str]] = {}
    for item in scan.items:
        shared.setdefault(item.image.stem.lower(), []).append(scan.rel(item.image))
    found = []
    if files:
        found.append(Finding("orphan_caption", "warning", f"{_plural(len(files), 'caption file')} with no image: "
                             f"{names(files)}.", "Check the file names match the images (photo1.jpg and photo1.txt); "
                             "set aside captions you no longer need.", files, "set_aside", files))
    for group in (g for g in shared.values() if len(g) > 1):
        found.append(Finding("shared_caption", "warning", f"{names(group)} share one caption file name.",
                             "Rename one so each image has its own caption.", group))
    return found


CHECKS = [check_image_count, check_nested_images, check_unsupported, check_broken_images, check_missing_captions,
          check_caption_text, check_trigger, check_identical_captions, check_caption_length, check_duplicates,
          check_sizes, check_exif_rotation, check_color_modes, check_orphans, check_buckets, check_spread]
