"""The dataset journal: every change to a dataset is recorded so that it can be undone exactly (torch-free).

    with JournalEntry(root, "flatten_alpha", "put transparent images on white") as entry:
        entry.replace(path, new_bytes)                       # the original is copied to the backup folder first
    undo(root)                                               # the latest entry not yet undone, exactly reversed

Rules: a file is never deleted. A changed file's original is copied to `_easel/backups/<entry id>/` first; every
action is one line of `_easel/journal.jsonl`. Undo puts originals back byte for byte; anything found changed since
(edited by the user) is moved into the backup folder rather than overwritten. Fixes (engine.dataset_fix), caption
edits (engine.caption_edit) and captioning (engine.caption) all write here, so one undo stack covers the dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

STATE_DIR = "_easel"


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
