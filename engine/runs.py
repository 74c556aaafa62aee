"""Run folders: runs/<name>-<YYYYmmdd-HHMMSS>/ holding everything one training run reads and writes (torch-free).

    preset.yaml    the fully resolved preset (rerunnable by hand: python -m engine train RUN_DIR)
    events.jsonl   the event stream the GUI tails          engine.log   the engine's stdout and stderr
    samples/  checkpoints/  state/ (resume)  control/ (empty files the GUI drops: stop, sample_now, save_now)
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from engine.config.save import save_preset
from engine.config.schema import Preset

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUBFOLDERS = ("samples", "checkpoints", "state", "control")


def runs_root(output_dir: str) -> Path:
    """output.dir as an absolute folder; a relative one is relative to the Easel folder, not the cwd."""
    root = Path(output_dir).expanduser()
    return root if root.is_absolute() else PROJECT_ROOT / root


def safe_run_name(name: str) -> str:
    """A run name usable as a folder on Windows too (no <>:"/\\|?* and no trailing dots or spaces)."""
    cleaned = re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", name).strip(" .")
    return cleaned or "run"


class RunFolderError(OSError):
    """The run folder cannot be made or written; the message says where and what to do (the GUI shows it)."""


def cannot_write(folder: Path, exc: OSError) -> RunFolderError:
    import errno
    import shutil

    if exc.errno == errno.ENOSPC:
        try:
            free = f"{shutil.disk_usage(folder if folder.exists() else folder.parent).free / 2**30:.1f} GB free"
        except OSError:
            free = "no space left"
        return RunFolderError(f"The disk of {folder} is full ({free}): free some space, or choose another "
                              f"output.dir on another drive.")
    return RunFolderError(f"Cannot write to {folder} ({exc.strerror or exc}): choose another output.dir, a folder "
                          f"you can write to (or run Easel from a folder of your own).")


def create_run_dir(preset: Preset, root: str | Path | None = None, now: float | None = None) -> Path:
    """Make a new run folder under `root` (default: output.dir) and write the resolved preset into it."""
    base = Path(root) if root is not None else runs_root(preset.output.dir)
    try:
        return _create(preset, base, now)
    except RunFolderError:
        raise
    except OSError as e:
        raise cannot_write(base, e) from e


def _create(preset: Preset, base: Path, now: float | None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    name = f"{safe_run_name(preset.output.run_name)}-{stamp}"
    run_dir, n = base / name, 2
    while run_dir.exists():  # two runs in the same second
        run_dir, n = base / f"{name}-{n}", n + 1
    for sub in SUBFOLDERS:
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    save_preset(preset, run_dir / "preset.yaml")
    return run_dir


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "preset.yaml").is_file()


def list_runs(root: str | Path) -> list[Path]:
    """Run folders under root, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_run_dir(p)), key=lambda p: p.stat().st_mtime, reverse=True)
