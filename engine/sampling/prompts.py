"""Prompt files (sampling.eval_prompts_file): one prompt per line; blank lines and lines starting with # are skipped."""
from __future__ import annotations

from pathlib import Path

from engine.failures import UserError

EASEL_FOLDER = Path(__file__).resolve().parents[2]  # relative prompt files are found from here, not the cwd


def read_prompts_file(path: str, key: str = "sampling.eval_prompts_file") -> list[str]:
    """The prompts of `path` (relative paths are from the Easel folder); [] for an empty path. `key`: the preset key
    the errors name."""
    if not path.strip():
        return []
    file = Path(path).expanduser()
    file = file if file.is_absolute() else EASEL_FOLDER / file
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{key}: no such file: {file}",
                        "Fix the path (relative paths start at the Easel folder), or leave it empty.") from None
    except UnicodeDecodeError:
        raise UserError(f"{key}: {file} is not a UTF-8 text file.",
                        "Save it as UTF-8 text, one prompt per line.") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
