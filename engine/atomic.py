"""Atomic file writes (torch-free): write `name.tmp`, fsync, `os.replace`. A crash or power loss mid-write leaves
the previous file intact, never a half-written or empty one. Every file Easel overwrites goes through here:
presets, captions, the undo journal's targets, caches, training state and LoRA files.
safetensors is imported inside atomic_save_file, so importing this module stays torch-free."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import, before any thread starts: os.umask can only be read by setting it.
_DEFAULT_MODE = 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) to produce the file, make it durable, then move it over `path` in one step.

    The file gets the mode a plain write would give it (the user's umask; an existing file keeps its own):
    some writers create private 0600 files (safetensors does), which other accounts, a shared folder or a
    ComfyUI run as another user could not read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        if os.name != "nt":
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else _DEFAULT_MODE)
        with open(tmp, "rb+") as f:  # fsync the finished file, whoever wrote it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()  # only left over when write() or the replace failed
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 with the newlines exactly as given (no Windows CRLF translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_file(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """safetensors save that never leaves a half-written file: write `name.tmp`, fsync, then os.replace.

    A crash or a full disk mid-save leaves the previous good file in place (and at worst a stray .tmp).
    """
    from safetensors.torch import save_file

    bad = [k for k, v in (metadata or {}).items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be str; not: {', '.join(bad)}")
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
