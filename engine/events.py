"""The JSON-lines event stream between the engine and the GUI (torch-free; both sides import it).

One event per line in `events.jsonl`: `{"t": unix_s, "kind": ..., ...}`. The writer flushes every line so the GUI,
which tails the file from a byte offset, never sees half an event. Kinds and their fields are listed in KINDS.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

# kind -> the fields a reader may rely on (others may be present).
KINDS = {
    "started": ("preset", "versions", "device"),
    "status": ("phase", "text"),          # optional: n, total for long phases (loading, caching)
    "step": ("step", "total_steps", "epoch", "loss", "lr", "s_per_it", "eta_s", "vram_gb"),
    "sample": ("path", "prompt", "strength", "step"),   # optional: reward (training.mode rl)
    "saved": ("path", "format", "step"),
    "val": ("step", "val_loss", "best"),   # the held-out loss (fixed noise and levels) and the lowest so far
    "reflow": ("iteration", "straightness"),  # before reflow iteration k (and at the end): 1-step vs many-step gap
    # after an RL epoch's rollouts (engine/rl/phase.py): their rewards overall, per reward and per prompt, advantages
    "rl": ("rl_epoch", "step", "images", "reward_mean", "reward_std", "rewards", "per_prompt", "adv_mean", "adv_std"),
    "warning": ("message",),
    "error": ("message", "hint", "traceback"),
    "stopped": ("step",),
    "done": (),
}


class EventWriter:
    """Appends events to a JSON-lines file; also usable as a context manager."""

    def __init__(self, path: str | os.PathLike, echo=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", newline="\n")
        self._echo = echo  # optional callable(event_dict) for a console line

    def emit(self, kind: str, **fields) -> dict:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(KINDS)}")
        event = {"t": round(time.time(), 3), "kind": kind, **fields}
        self._file.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        if self._echo:
            self._echo(event)
        return event

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_new(path: str | os.PathLike, offset: int = 0) -> tuple[list[dict], int]:
    """Events written after byte `offset`, and the offset to pass next time.

    A trailing line without its newline is still being written: it is left for the next call.
    """
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        if line.strip():
            try:
                events.append(json.loads(line.decode("utf-8")))
            except json.JSONDecodeError:
                continue  # a torn line after a crash: skip it rather than stop tailing
    return events, offset + end


def read_all(path: str | os.PathLike) -> list[dict]:
    return read_new(path, 0)[0]
