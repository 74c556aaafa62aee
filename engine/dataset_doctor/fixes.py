"""Dataset fixes that never lose data, each one undoable (torch-free; the GUI calls apply/undo).

    entry = apply(root, "flatten_alpha", ["cutout.png"])        # -> dict: what was changed, moved, created
    undo(root)                                                 # the latest journal entry, exactly reversed

Rules: a file is never deleted. A changed file's original is backed up and every action journaled first
(engine.data.journal, which also provides undo and history; they are re-exported here); set-aside files are
moved to `_set_aside/` (same relative path).
CLI: python -m engine fix DATASET FIX [FILE ...] [--trigger T]  |  fix DATASET undo  |  fix DATASET history
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from engine.data import layout
from engine.data.journal import JournalEntry, history, undo  # undo/history: part of this module's API

SET_ASIDE_DIR = "_set_aside"


def _image_bytes(image, image_format: str, original) -> bytes:
    """Encode like the original: same format, high quality, ICC profile kept, no orientation tag."""
    args = {"icc_profile": original.info.get("icc_profile")} if original.info.get("icc_profile") else {}
    if image_format == "JPEG":
        args.update(quality=95, subsampling=0)
    elif image_format == "WEBP":
        args.update(quality=95)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **args)
    return buffer.getvalue()


def _flatten(image, background=(255, 255, 255)):
    from PIL import Image

    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, background)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _to_rgb(image):
    import numpy as np
    from PIL import Image

    if image.mode.startswith("I"):  # 16/32-bit grey: scale to 8 bits (convert() would clip at 255)
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if values.max() > 255 else 1.0
        return Image.fromarray((values * scale).round().clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return _flatten(image)
    return image.convert("RGB")


def _exif_upright(image):
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)  # also drops the orientation tag


IMAGE_FIXES = {"apply_exif_rotation": _exif_upright, "flatten_alpha": _flatten, "convert_to_rgb": _to_rgb}


def _fix_images(entry: JournalEntry, files: list[Path], transform) -> None:
    from PIL import Image

    for path in files:
        with Image.open(path) as original:
            original.load()
            fixed = transform(original)
            data = _image_bytes(fixed, original.format, original)
        entry.replace(path, data)


def _set_aside(entry: JournalEntry, files: list[Path]) -> None:
    """Move images (with their captions) or stray caption files into _set_aside/, keeping relative paths."""
    for path in files:
        if not path.exists():
            continue
        caption = layout.caption_path_for(entry.root, path)
        entry.move(path, entry.root / SET_ASIDE_DIR / entry.rel(path))
        is_image = path.suffix.lower() in layout.SUPPORTED_IMAGE_EXTS + layout.UNSUPPORTED_IMAGE_EXTS
        if is_image and caption.exists() and not _caption_shared(entry.root, path, caption):
            entry.move(caption, entry.root / SET_ASIDE_DIR / entry.rel(caption))


def _caption_shared(root: Path, image: Path, caption: Path) -> bool:
    # twin.jpg and twin.png share twin.txt: setting one aside must leave the caption for the other
    return any(i.caption == caption and i.image != image for i in layout.find_items(root))


def _create_captions(entry: JournalEntry, files: list[Path], trigger: str | None, template: str) -> None:
    if "{trigger}" in template and not trigger:
        raise ValueError("A trigger word is needed to fill the caption template '{trigger}'.")
    text = template.format(trigger=trigger or "").strip()
    for path in files:
        caption = layout.caption_path_for(entry.root, path)
        if not caption.exists():
            entry.create(caption, text.encode("utf-8"))


FIXES = {
    "apply_exif_rotation": "turn images upright as their EXIF tag says (original kept)",
    "flatten_alpha": "put transparent images on a white background (original kept)",
    "convert_to_rgb": "convert CMYK, 16-bit and palette images to 8-bit RGB (original kept)",
    "create_missing_captions": "create caption files from a template with the trigger word",
    "add_trigger": "put the trigger word at the start of captions that lack it (captions backed up)",
    "set_aside": "move files (with their captions) into _set_aside/",
}


def apply(root: Path, fix: str, files: list[str | Path], trigger: str | None = None,
          template: str = "{trigger}") -> dict | None:
    """Apply one fix (a FIXES key, as in Finding.fix) to `files` (relative to root, or absolute).

    Returns the journal entry (dict with id, action, replaced/moved/created file lists), or None if nothing changed.
    trigger/template: for create_missing_captions ("{trigger}" becomes the trigger word) and add_trigger.
    """
    from engine.registry import choose

    choose(FIXES, fix, "fix")
    root = Path(root)
    paths = [p if Path(p).is_absolute() else root / p for p in map(Path, files)]
    if fix == "add_trigger":
        from engine.captions import edit as caption_edit
        return caption_edit.apply(root, "add_trigger", files=paths, trigger=trigger)
    with JournalEntry(root, fix, FIXES[fix]) as entry:
        if fix in IMAGE_FIXES:
            _fix_images(entry, paths, IMAGE_FIXES[fix])
        elif fix == "set_aside":
            _set_aside(entry, paths)
        elif fix == "create_missing_captions":
            _create_captions(entry, paths, trigger, template)
    return entry.record if entry.changed() else None


def _default_files(root: Path, fix: str, trigger: str | None) -> list[str]:
    """The files the doctor suggests this fix for. Near duplicates are left to the user: which shot to keep is
    a matter of taste."""
    from engine.dataset_doctor.check_dataset import check_dataset

    report = check_dataset(root, trigger=trigger, deep=fix == "set_aside")
    return [f for finding in report.findings if finding.fix == fix and finding.code != "near_duplicate"
            for f in finding.fix_files]


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine fix", description="Fix dataset problems (undoable).",
                                     epilog="fixes: " + "; ".join(f"{k}: {v}" for k, v in FIXES.items()))
    parser.add_argument("dataset", type=Path)
    parser.add_argument("fix", help="a fix name, 'undo' or 'history'")
    parser.add_argument("files", nargs="*", help="files to fix (default: every file the check suggests it for)")
    parser.add_argument("--trigger")
    parser.add_argument("--template", default="{trigger}", help="text of new captions; {trigger} is replaced")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="replace")
    if args.fix == "history":
        for entry in history(args.dataset):
            print(f"{entry['id']}  {entry['action']}: {_summary(entry)}")
        return 0
    try:
        entry = undo(args.dataset) if args.fix == "undo" else \
            apply(args.dataset, args.fix, args.files or _default_files(args.dataset, args.fix, args.trigger),
                  args.trigger, args.template)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'undid' if args.fix == 'undo' else 'done'}: {_summary(entry)}" if entry else "nothing to do")
    return 0


def _summary(entry: dict) -> str:
    parts = [f"{len(entry[k])} {k}" for k in ("replaced", "moved", "created") if entry[k]]
    return ", ".join(parts) or "no files"
