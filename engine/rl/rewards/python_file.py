"""The python reward: the user's own .py file (rl.reward_file) that defines

    def reward(images, prompts):      # images: PIL RGB images, prompts: their prompts (str)
        return [...]                  # one number per image, higher is better

The file is imported once, when the run starts, under a module name of its own (two runs' files never clash), with
its folder first on sys.path while it imports, so it can import a helper module lying next to it.
A mistake in it (a syntax error, an exception while importing or inside reward()) becomes a UserError that shows
the file, the line and the error, not a traceback through Easel.
"""
from __future__ import annotations

import importlib.util
import itertools
import sys
import traceback
from pathlib import Path

from engine.failures import UserError

_module_numbers = itertools.count()


def build(rl, device, cache: dict):
    path = Path(rl.reward_file).expanduser().resolve()
    module = load_module(path)
    user_reward = getattr(module, "reward", None)
    if not callable(user_reward):
        raise UserError(f"rl.reward_file: {path} defines no reward(images, prompts) function.",
                        "Add `def reward(images, prompts):` returning one number per image (images are PIL "
                        "images, prompts their prompts).")

    def python_reward(images, prompts):
        try:
            return user_reward(images, prompts)
        except Exception as exc:  # the user's code: any error is theirs to fix, shown at their line
            raise UserError(f"rl.reward_file: reward() in {path} failed: {_where(exc, path)}",
                            "Fix the error at that line; the run can resume from its last checkpoint.") from exc

    return python_reward


def load_module(path: Path):
    """Import `path` as a fresh module; a UserError with the file, line and error if it cannot be imported."""
    name = f"easel_reward_file_{next(_module_numbers)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"rl.reward_file: {path} cannot be imported as Python.",
                        "rl.reward_file must be a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up there while it runs
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # SyntaxError, ImportError, anything its top level raises
        del sys.modules[name]
        raise UserError(f"rl.reward_file: {path} failed to import: {_where(exc, path)}",
                        "Fix the error at that line, or run `python <the file>` to see it on its own.") from exc
    finally:
        sys.path.remove(str(path.parent))
    return module


def _where(exc: BaseException, path: Path) -> str:
    """'line 3: `x = 1 / 0`: ZeroDivisionError: division by zero', from the deepest frame in the user's file."""
    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        code = (exc.text or "").strip()
        return f"line {exc.lineno}{f': `{code}`' if code else ''}: {type(exc).__name__}: {exc.msg}"
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if _same_file(frame.filename, path)]
    if not frames:
        return error
    frame = frames[-1]
    code = (frame.line or "").strip()
    return f"line {frame.lineno}{f': `{code}`' if code else ''}: {error}"


def _same_file(filename: str, path: Path) -> bool:
    try:
        return Path(filename).resolve() == path
    except OSError:
        return False
