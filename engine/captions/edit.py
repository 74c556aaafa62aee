"""Bulk caption edits with a preview, a backup of every changed caption, and one-step undo (torch-free).

    changes = preview(root, "replace", find="man", replace="person")   # [Change(path, before, after)], nothing written
    entry = apply(root, "replace", find="man", replace="person")       # writes; originals backed up byte for byte
    undo(root)                                                         # restores the last caption edit exactly

Each operation is a plain function text -> text in OPS; its keyword parameters are the op's options.
Tags are the comma-separated parts of a caption ("ohwx, red hat, smiling").
CLI: python -m engine captions DATASET OP [--trigger T] [--text S] [--find F --replace R [--regex]] [--tags a,b]
     [--apply]   (without --apply it only prints the diff)   |   captions DATASET undo
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import NamedTuple

from engine.data import layout
from engine.data.journal import STATE_DIR, JournalEntry, undo as undo_entry

CAPTION_ACTIONS = ("caption_edit", "caption_run")  # journal actions that only touch captions


def trigger_pattern(trigger: str) -> re.Pattern:
    """The trigger as a whole word ('ohwx' matches 'ohwx,' but not 'ohwxman'), any case."""
    return re.compile(rf"(?<!\w){re.escape(trigger.strip())}(?!\w)", re.IGNORECASE)


def _tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",")]


def _join(tags: list[str]) -> str:
    return ", ".join(t for t in tags if t)


def add_trigger(text: str, trigger: str) -> str:
    """'a man' -> 'ohwx, a man'; unchanged if the trigger is already there (as a whole word)."""
    if not trigger or not trigger.strip():
        raise ValueError("add_trigger needs a trigger word")
    if trigger_pattern(trigger).search(text):
        return text
    return f"{trigger.strip()}, {text.strip()}" if text.strip() else trigger.strip()


def remove_trigger(text: str, trigger: str) -> str:
    """Remove the trigger word (whole word, any case) and the comma that followed it."""
    pattern = re.compile(rf"{trigger_pattern(trigger).pattern}\s*,?\s*", re.IGNORECASE)
    return re.sub(r"\s*,\s*$", "", pattern.sub("", text)).strip()


def prefix(text: str, text_to_add: str) -> str:
    return text_to_add + text


def suffix(text: str, text_to_add: str) -> str:
    return text + text_to_add


def replace(text: str, find: str, replace: str, regex: bool = False) -> str:
    """Replace every `find` (plain text, or a regular expression with regex=True; \\1 refers to groups)."""
    if not find:
        raise ValueError("find must not be empty")
    return re.sub(find, replace, text) if regex else text.replace(find, replace)


def strip_tags(text: str) -> str:
    """Trim spaces around tags and drop empty ones: ' a ,, b , ' -> 'a, b'."""
    return _join(_tags(text))


def dedupe_tags(text: str) -> str:
    """Drop repeated tags (any case), keeping the first: 'a, b, A' -> 'a, b'."""
    seen, kept = set(), []
    for tag in _tags(text):
        if tag and tag.lower() not in seen:
            seen.add(tag.lower())
            kept.append(tag)
    return _join(kept)


def remove_tags(text: str, tags: list[str]) -> str:
    """Drop the listed tags (any case): remove_tags('a, b, c', ['b']) -> 'a, c'."""
    unwanted = {t.strip().lower() for t in tags}
    return _join([t for t in _tags(text) if t.lower() not in unwanted])


def lowercase(text: str) -> str:
    return text.lower()


# What each op did, in the words the undo message and the journal show ("Undone: added the trigger 'zqx'").
OP_WORDS = {"add_trigger": "added the trigger {trigger!r}", "remove_trigger": "removed the trigger {trigger!r}",
            "prefix": "put {text_to_add!r} before the captions", "suffix": "put {text_to_add!r} after the captions",
            "replace": "replaced {find!r} with {replace!r}", "strip_tags": "tidied the tags' spaces",
            "dedupe_tags": "removed repeated tags", "remove_tags": "removed the tags {tags}",
            "lowercase": "lowercased the captions"}

OPS = {"add_trigger": add_trigger, "remove_trigger": remove_trigger, "prefix": prefix, "suffix": suffix,
       "replace": replace, "strip_tags": strip_tags, "dedupe_tags": dedupe_tags, "remove_tags": remove_tags,
       "lowercase": lowercase}


class Change(NamedTuple):
    """One caption that an edit changes: path (absolute), the text before and after."""

    path: Path
    before: str
    after: str

    def diff(self) -> str:
        """A unified diff of the change, for the preview."""
        lines = difflib.unified_diff(self.before.splitlines(), self.after.splitlines(),
                                     f"{self.path.name} (before)", f"{self.path.name} (after)", lineterm="")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {"path": str(self.path), "before": self.before, "after": self.after, "diff": self.diff()}


def _caption_files(root: Path, files) -> list[Path]:
    """Existing caption files: of the given images/captions, or of every image in the dataset."""
    root = Path(root)
    if files is None:
        return [item.caption for item in layout.find_items(root) if item.caption is not None]
    paths = [p if Path(p).is_absolute() else root / p for p in map(Path, files)]
    captions = [p if p.suffix.lower() == ".txt" else layout.caption_path_for(root, p) for p in paths]
    return list(dict.fromkeys(c for c in captions if c.exists()))  # unique, in order


def preview(root: Path, op: str, files=None, **params) -> list[Change]:
    """What `op` would change, without writing: one Change per caption whose text would differ.

    files: images or caption files (relative to root, or absolute) to limit the edit to; None = every caption.
    params: the op's options, e.g. trigger="ohwx", find="x", replace="y", regex=True, text_to_add=", 4k".
    """
    from engine.registry import choose

    edit = choose(OPS, op, "caption edit")
    changes = []
    for path in _caption_files(root, files):
        before = layout.read_caption(path)
        after = edit(before, **params)
        if after != before:
            changes.append(Change(path, before, after))
    return changes


def write_captions(root: Path, texts: dict[Path, str], label: str, action: str = "caption_edit") -> dict | None:
    """Write captions (path -> text, UTF-8): existing files are backed up first, new ones recorded, all in one
    journal entry so that one undo restores every caption byte for byte. Returns the entry (None: no change)."""
    with JournalEntry(Path(root), action, label) as entry:
        for path, text in texts.items():
            write_caption(entry, path, text)
    return entry.record if entry.changed() else None


def write_caption(entry: JournalEntry, path: Path, text: str) -> None:
    """Write one caption inside a journal entry: a new file is recorded, an existing one backed up first."""
    data = text.encode("utf-8")
    if not path.exists():
        entry.create(path, data)
    elif path.read_bytes() != data:
        entry.replace(path, data)


def apply(root: Path, op: str, files=None, **params) -> dict | None:
    """Apply `op` (see preview) and return the journal entry: {"id", "replaced": [{"path", "backup"}...], ...}."""
    changes = preview(root, op, files, **params)
    return write_captions(root, {c.path: c.after for c in changes}, op_words(op, params, len(changes)))


def op_words(op: str, params: dict, count: int) -> str:
    """'added the trigger 'zqx' to 12 caption(s)': what a caption edit did, for the undo message."""
    try:
        words = OP_WORDS[op].format(**params)
    except (KeyError, IndexError):
        words = op.replace("_", " ")
    return f"{words} ({count} caption(s))"


def undo(root: Path) -> dict | None:
    """Undo the latest caption edit or captioning run: every caption it changed comes back byte for byte, and
    captions it created are removed (unless edited since: those are kept in the backup folder)."""
    return undo_entry(Path(root), CAPTION_ACTIONS)


# which CLI options each op takes: op -> {param: argparse dest}
_CLI_PARAMS = {"add_trigger": {"trigger": "trigger"}, "remove_trigger": {"trigger": "trigger"},
               "prefix": {"text_to_add": "text"}, "suffix": {"text_to_add": "text"},
               "replace": {"find": "find", "replace": "replace", "regex": "regex"}, "remove_tags": {"tags": "tags"}}


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine captions", description="Bulk caption edits: shows the "
                                     "diff; --apply writes (backed up); 'undo' restores the last edit.")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("op", help=f"one of {', '.join(OPS)}, or undo")
    parser.add_argument("--trigger")
    parser.add_argument("--text", help="text for prefix/suffix")
    parser.add_argument("--find")
    parser.add_argument("--replace", default="")
    parser.add_argument("--regex", action="store_true")
    parser.add_argument("--tags", type=lambda s: s.split(","), help="comma-separated tags for remove_tags")
    parser.add_argument("--apply", action="store_true", help="write the changes (default: preview only)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="replace")
    if args.op == "undo":
        entry = undo(args.dataset)
        print(f"restored {len(entry['replaced'])} captions, removed {len(entry['created'])} created ones"
              if entry else "nothing to undo")
        return 0
    params = {name: getattr(args, dest) for name, dest in _CLI_PARAMS.get(args.op, {}).items()}
    try:
        changes = preview(args.dataset, args.op, **params)
        for change in changes:
            print(change.diff())
        if args.apply and changes:
            entry = apply(args.dataset, args.op, **params)
            print(f"changed {len(changes)} captions (backup: {Path(STATE_DIR) / 'backups' / entry['id']}); "
                  "undo with: python -m engine captions DATASET undo")
        else:
            print(f"{len(changes)} captions would change" + ("; add --apply to write them" if changes else ""))
    except (ValueError, re.error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
