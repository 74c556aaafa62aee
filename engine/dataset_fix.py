"""Dataset fixes that never lose data, and the journal that undoes them (torch-free; the GUI calls apply/undo).

    entry = apply(root, "flatten_alpha", ["cutout.png"])        # -> dict: what was changed, moved, created
    undo(root)                                                 # the latest journal entry, exactly reversed

Rules: a file is never deleted. A changed file's original is copied to `_easel/backups/<entry id>/` first; set-aside
files are moved to `_set_aside/` (same relative path); every action is one line of `_easel/journal.jsonl`.
Undo puts originals back byte for byte; anything found changed since (edited by the user) is moved into the backup
folder rather than overwritten. Caption edits (engine.caption_edit) and captioning (engine.caption) use the same
journal, so one undo stack covers the whole dataset.
CLI: python -m engine fix DATASET FIX [FILE ...] [--trigger T]  |  fix DATASET undo  |  fix DATASET history
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

from engine import dataset_layout as layout

STATE_DIR, SET_ASIDE_DIR = "_easel", "_set_aside"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class JournalEntry:
    """One undoable action. Use as a context manager: the entry is written to the journal even if the action fails
    half-way, so whatever was done can still be undone."""

    def __init__(self, root: Path, action: str, label: str):
        self.root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while (self.root / STATE_DIR / "backups" / f"{stamp}-{n}").exists() or self._id_used(f"{stamp}-{n}"):
            n += 1
        self.id = f"{stamp}-{n}"
        self.record = {"id": self.id, "t": round(time.time(), 3), "action": action, "label": label,
                       "replaced": [], "moved": [], "created": []}

    def _id_used(self, entry_id: str) -> bool:
        return any(e.get("id") == entry_id for e in read_journal(self.root))

    def rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    @property
    def backup_dir(self) -> Path:
        return self.root / STATE_DIR / "backups" / self.id

    def replace(self, path: Path, data: bytes) -> None:
        """Write `data` to the existing file `path`, keeping a byte-exact copy of the original."""
        rel = self.rel(path)
        backup = self.backup_dir / rel
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, backup)
        _write_atomic(Path(path), data)
        self.record["replaced"].append({"path": rel, "backup": self.rel(backup),
                                        "sha256": hashlib.sha256(data).hexdigest()})

    def create(self, path: Path, data: bytes) -> None:
        if Path(path).exists():
            raise FileExistsError(f"{path} already exists")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(Path(path), data)
        self.record["created"].append({"path": self.rel(path), "sha256": hashlib.sha256(data).hexdigest()})

    def move(self, path: Path, destination: Path) -> Path:
        destination = _free_name(Path(destination))
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)
        self.record["moved"].append({"from": self.rel(path), "to": self.rel(destination)})
        return destination

    def changed(self) -> bool:
        return any(self.record[k] for k in ("replaced", "moved", "created"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.changed():
            _append_journal(self.root, self.record)


def _free_name(path: Path) -> Path:
    """`path`, or `name (2).ext`, ... if it is taken: nothing in _set_aside/ is ever overwritten."""
    candidate, n = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        n += 1
    return candidate


def _journal_path(root: Path) -> Path:
    return Path(root) / STATE_DIR / "journal.jsonl"


def _append_journal(root: Path, record: dict) -> None:
    path = _journal_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_journal(root: Path) -> list[dict]:
    """Every journal line, oldest first: action entries and {"undo": id} markers."""
    path = _journal_path(root)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def history(root: Path, actions: tuple[str, ...] | None = None) -> list[dict]:
    """Entries not yet undone, newest first (optionally only those whose action is in `actions`)."""
    lines = read_journal(root)
    undone = {line["undo"] for line in lines if "undo" in line}
    entries = [e for e in lines if "id" in e and e["id"] not in undone]
    return [e for e in reversed(entries) if actions is None or e["action"] in actions]


def undo(root: Path, actions: tuple[str, ...] | None = None) -> dict | None:
    """Reverse the newest entry not yet undone (only among `actions` if given); None when there is nothing to undo.

    Returns the entry, plus "kept" (files found edited since, moved into the entry's backup folder instead of
    being overwritten) and "missing" (set-aside files no longer in _set_aside/, so not put back).
    """
    root = Path(root)
    pending = history(root, actions)
    if not pending:
        return None
    entry = pending[0]
    keep_dir = root / STATE_DIR / "backups" / entry["id"] / "changed-after"
    kept = []

    def set_aside_if_edited(path: Path, sha: str | None):
        if path.exists() and (sha is None or _sha(path) != sha):
            target = _free_name(keep_dir / path.relative_to(root))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            kept.append(target.relative_to(root).as_posix())

    for item in reversed(entry["created"]):
        path = root / item["path"]
        set_aside_if_edited(path, item["sha256"])
        if path.exists():
            path.unlink()  # exactly the file we created, unchanged: removing it loses nothing
    missing = []
    for item in reversed(entry["moved"]):
        if not (root / item["to"]).exists():  # the user moved it out of _set_aside/ themselves
            missing.append(item["to"])
            continue
        set_aside_if_edited(root / item["from"], None)  # something new took the old place
        os.replace(root / item["to"], root / item["from"])
    for item in reversed(entry["replaced"]):
        path = root / item["path"]
        set_aside_if_edited(path, item["sha256"])
        if path.exists():
            path.unlink()  # our own output, unchanged; the original comes back from the backup next
        shutil.copy2(root / item["backup"], path)
    _append_journal(root, {"undo": entry["id"], "t": round(time.time(), 3)})
    return {**entry, "kept": kept, "missing": missing}


# ---------------------------------------------------------------------------------------------- the fixes
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
        from engine import caption_edit
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
    from engine.dataset_check import check_dataset

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
