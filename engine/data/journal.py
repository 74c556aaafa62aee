"""The dataset journal: every change to a dataset is recorded so that it can be undone exactly (torch-free).

    with JournalEntry(root, "flatten_alpha", "put transparent images on white") as entry:
        entry.replace(path, new_bytes)                       # the original is copied to the backup folder first
    undo(root)                                               # the latest entry not yet undone, exactly reversed

Rules: a file is never deleted. A changed file's original is copied to `_easel/backups/<entry id>/` first; every
action is recorded in `_easel/journal.jsonl` before its first file changes (a header line with id, action and
label), and each file change is appended (and fsynced) as its own {"add": id, ...} line before the file is touched,
so an action killed half-way is still undoable exactly. All writes go through engine.atomic (fsync, then replace).
Undo puts originals back byte for byte; anything found changed since
(edited by the user) is moved into the backup folder rather than overwritten. Fixes (engine.dataset_doctor.fixes), caption
edits (engine.captions.edit) and captioning (engine.captions.captioning) all write here, so one undo stack covers the dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from engine.atomic import atomic_write, atomic_write_bytes

STATE_DIR = "_easel"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class JournalEntry:
    """One undoable action. Use as a context manager (or not: nothing is left to do at exit). Every change is in
    the journal before the file changes, so whatever was done can be undone even if the process dies half-way."""

    def __init__(self, root: Path, action: str, label: str):
        self.root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while (self.root / STATE_DIR / "backups" / f"{stamp}-{n}").exists() or self._id_used(f"{stamp}-{n}"):
            n += 1
        self.id = f"{stamp}-{n}"
        self.record = {"id": self.id, "t": round(time.time(), 3), "action": action, "label": label,
                       "replaced": [], "moved": [], "created": []}
        self._begun = False

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
        atomic_write(backup, lambda tmp: shutil.copy2(path, tmp))  # the original, durable before anything changes
        self._add("replaced", {"path": rel, "backup": self.rel(backup), "sha256": hashlib.sha256(data).hexdigest()})
        atomic_write_bytes(path, data)

    def create(self, path: Path, data: bytes) -> None:
        if Path(path).exists():
            raise FileExistsError(f"{path} already exists")
        self._add("created", {"path": self.rel(path), "sha256": hashlib.sha256(data).hexdigest()})
        atomic_write_bytes(path, data)

    def move(self, path: Path, destination: Path) -> Path:
        destination = _free_name(Path(destination))
        destination.parent.mkdir(parents=True, exist_ok=True)
        self._add("moved", {"from": self.rel(path), "to": self.rel(destination)})
        os.replace(path, destination)
        return destination

    def _add(self, kind: str, item: dict) -> None:
        """Journal one change before it is made: the header line on the first change, then the item's own line."""
        if not self._begun:
            _append_journal(self.root, self.record)
            self._begun = True
        _append_journal(self.root, {"add": self.id, "kind": kind, "item": item})
        self.record[kind].append(item)

    def changed(self) -> bool:
        return any(self.record[k] for k in ("replaced", "moved", "created"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass  # everything is in the journal already


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
        f.flush()
        os.fsync(f.fileno())  # on disk before the file it describes changes


def read_journal(root: Path) -> list[dict]:
    """Every entry and {"undo": id} marker, oldest first; an entry's {"add": id} lines are folded into it."""
    path = _journal_path(root)
    if not path.exists():
        return []
    lines, entries = [], {}
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
        except ValueError:  # a line cut short by a crash: its change never happened
            continue
        if "add" in line:
            if line["add"] in entries:
                entries[line["add"]][line["kind"]].append(line["item"])
            continue
        if "id" in line:
            line = entries[line["id"]] = {**line, **{k: list(line.get(k, [])) for k in ("replaced", "moved",
                                                                                        "created")}}
        lines.append(line)
    return lines


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
        if not (root / item["to"]).exists():
            if not (root / item["from"]).exists():  # the user moved it out of _set_aside/ themselves
                missing.append(item["to"])
            continue  # (else the move never happened: the process died first)
        set_aside_if_edited(root / item["from"], None)  # something new took the old place
        os.replace(root / item["to"], root / item["from"])
    for item in reversed(entry["replaced"]):
        path, backup = root / item["path"], root / item["backup"]
        if path.exists() and path.read_bytes() == backup.read_bytes():
            continue  # never replaced (the process died first), or already back
        set_aside_if_edited(path, item["sha256"])  # else it is our own output, unchanged: overwriting loses nothing
        atomic_write(path, lambda tmp, backup=backup: shutil.copy2(backup, tmp))
    _append_journal(root, {"undo": entry["id"], "t": round(time.time(), 3)})
    return {**entry, "kept": kept, "missing": missing}
