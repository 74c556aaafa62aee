"""What the Run tab shows, folded from events.jsonl (plain data; no Gradio, no torch).

    view = RunView(run_dir)
    view.poll()          # reads the events written since the last poll (from a byte offset)
    view.progress_text(), view.log (lines), view.loss_points, view.gallery(), view.output_files(), view.error
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.events import read_new

MAX_LOG_LINES = 400


def format_seconds(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(float(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def _lr_text(lr) -> str:
    if isinstance(lr, dict):
        return " ".join(f"{k} {v:.2e}" for k, v in lr.items() if isinstance(v, (int, float)))
    return f"{lr:.2e}" if isinstance(lr, (int, float)) else ""


def event_line(e: dict) -> str | None:
    """One log line for an event (None: not worth a line)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(e.get("t", 0)))
    kind = e.get("kind")
    if kind == "started":
        gpus = e.get("processes") or 1
        spread = f" and {gpus - 1} more GPU(s), effective batch {e.get('effective_batch')}" if gpus > 1 else ""
        return f"{stamp} started on {e.get('device', '?')}{spread}"
    if kind == "status":
        n, total = e.get("n"), e.get("total")
        count = f" ({n}/{total})" if n is not None and total else ""
        return f"{stamp} {e.get('phase', '')}: {e.get('text', '')}{count}"
    if kind == "step":
        loss = e.get("loss")
        return (f"{stamp} step {e.get('step')}/{e.get('total_steps', '?')}  loss {loss:.4f}  lr {_lr_text(e.get('lr'))}"
                f"  {e.get('s_per_it', 0):.2f} s/it" if isinstance(loss, (int, float)) else None)
    if kind == "sample":
        reward = f", reward {e['reward']:.4g}" if isinstance(e.get("reward"), (int, float)) else ""
        on = f", on {e['preview']}" if e.get("preview") else ""
        return (f"{stamp} sample (step {e.get('step')}, strength {e.get('strength')}{on}{reward}): "
                f"{Path(str(e.get('path'))).name}")
    if kind == "rl":  # an RL epoch's rollouts were scored
        return (f"{stamp} RL epoch {e.get('rl_epoch')}: reward {e.get('reward_mean', 0):.4g} ± "
                f"{e.get('reward_std', 0):.3g} over {e.get('images')} images")
    if kind == "saved":
        return f"{stamp} saved {e.get('format', '')} {e.get('path')}"
    if kind == "val" and isinstance(e.get("val_loss"), (int, float)):
        best = e.get("best")
        return (f"{stamp} validation loss {e['val_loss']:.4f} at step {e.get('step')}"
                + (" (the best so far)" if best is not None and e["val_loss"] <= best else ""))
    if kind == "warning":
        return f"{stamp} WARNING {e.get('message', '')}"
    if kind == "error":
        return f"{stamp} ERROR {e.get('message', '')}" + (f"\n          hint: {e['hint']}" if e.get("hint") else "")
    if kind == "stopped":
        return f"{stamp} stopped at step {e.get('step')} (state saved; Resume continues here)"
    if kind == "done":
        return f"{stamp} done"
    return None


def _loss_in_name(path) -> float:
    """checkpoints/best/<run>-epoch012-step001500-val_loss0.0412.safetensors -> 0.0412 (engine/training/validation.py
    names them so); inf when the name has none."""
    found = re.search(r"val_loss(\d+\.\d+)", Path(str(path)).name)
    return float(found.group(1)) if found else float("inf")


@dataclass
class RunView:
    run_dir: Path
    offset: int = 0
    log: list[str] = field(default_factory=list)
    loss_points: list[tuple[int, float]] = field(default_factory=list)
    reward_points: list[tuple[int, float]] = field(default_factory=list)  # (step, an RL epoch's mean reward)
    val_points: list[tuple[int, float]] = field(default_factory=list)     # (step, validation loss)
    last_step: dict | None = None
    phase: str = ""
    samples: list[dict] = field(default_factory=list)
    saved: list[dict] = field(default_factory=list)
    error: dict | None = None
    finished: str | None = None          # done | stopped | error
    stop_requested_at: float | None = None
    _last_phase: str | None = None
    phase_progress: tuple = (None, None)  # (n, total) of the latest long phase (caching, captioning)
    # a counted phase between training steps (reflow 2/3: generating 40/80; its text, n, total), until it ends
    phase_between: tuple | None = None
    sent: dict = field(default_factory=dict)  # what the page shows already (tab_run.render skips unchanged parts)
    note: tuple | None = None             # (text, until, marks when said): a button's message, see say()
    grid: tuple = (None, None, None)      # the sample grid's prompt and the two steps compared
    grid_chosen: bool = False             # a person picked the steps (else they follow the newest two)

    def poll(self) -> int:
        """Fold the new events in; returns how many there were."""
        events, self.offset = read_new(Path(self.run_dir) / "events.jsonl", self.offset)
        for e in events:
            self._fold(e)
        if len(self.log) > MAX_LOG_LINES:
            del self.log[:-MAX_LOG_LINES]
        return len(events)

    def _fold(self, e: dict) -> None:
        kind = e.get("kind")
        line = event_line(e)
        if kind == "status" and self.log and self._last_phase == e.get("phase") and e.get("n") is not None:
            self.log[-1] = line  # "Caching latents 7/16" replaces 6/16: one line per phase, not hundreds
        elif line and (kind != "step" or e.get("step", 0) % 10 == 0 or e.get("step") == e.get("total_steps")):
            self.log.append(line)
        self._last_phase = e.get("phase") if kind == "status" else None
        if kind == "started":  # a resumed run starts over: its terminal state is the new process's
            self.finished, self.error = None, None
        elif kind == "status":
            self.phase = f"{e.get('phase', '')}: {e.get('text', '')}"
            self.phase_progress = (e.get("n"), e.get("total"))
            n, total = self.phase_progress
            counted = self.last_step and isinstance(n, int) and isinstance(total, int) and n < total
            self.phase_between = (e.get("text", ""), n, total) if counted else None
        elif kind == "step":
            self.last_step, self.phase, self.phase_between = e, "training", None
            if isinstance(e.get("loss"), (int, float)):
                self.loss_points.append((int(e["step"]), float(e["loss"])))
        elif kind == "val" and isinstance(e.get("val_loss"), (int, float)):
            self.val_points.append((int(e.get("step") or 0), float(e["val_loss"])))
        elif kind == "rl" and isinstance(e.get("reward_mean"), (int, float)):
            self.reward_points.append((int(e.get("step") or 0), float(e["reward_mean"])))
        elif kind == "sample":
            self.samples.append(e)
        elif kind == "saved":
            self.saved.append(e)
        elif kind in ("done", "stopped", "error"):
            self.finished = kind
            if kind == "error":
                self.error = e

    # --- the message under the buttons: said by a button, gone once the run has moved on ---
    def stage(self) -> str:
        """loading | training | stopping | done | stopped | error"""
        if self.finished:
            return self.finished
        if self.stop_requested_at is not None:
            return "stopping"
        return "training" if self.last_step else "loading"

    def say(self, text: str, until: str = "next stage") -> None:
        """Show `text` until the run moves on: "next stage" (loading -> training -> stopping -> finished), "finished"
        (the whole run), or "next file" (a sample or a checkpoint arrives: what Sample now / Save now asked for)."""
        self.note = (text, until, (self.stage(), len(self.samples) + len(self.saved)))

    def message(self) -> str:
        if not self.note:
            return ""
        text, until, (stage, files) = self.note
        if until == "finished":
            current = not self.finished
        elif until == "next file":
            current = self.stage() == stage and len(self.samples) + len(self.saved) == files
        else:
            current = self.stage() == stage
        return text if current else ""

    def progress(self) -> tuple[int, int]:
        s = self.last_step or {}
        return int(s.get("step", 0) or 0), int(s.get("total_steps", 0) or 0)

    def progress_text(self) -> str:
        if self.finished == "done":
            return "Finished."
        if self.finished == "stopped":
            return f"Stopped at step {self.progress()[0]}. Resume continues from there."
        if self.finished == "error":
            return "Failed (see the message below)."
        step, total = self.progress()
        if not self.last_step:
            return self.phase or "Starting the engine…"
        if self.phase_between:  # training waits for it: say what runs now, and where training stands
            text, n, of = self.phase_between
            return f"{text} {n}/{of} · at step {step}/{total or '?'}"
        s = self.last_step
        return (f"Step {step}/{total or '?'} · {s.get('s_per_it', 0):.2f} s/it · ETA {format_seconds(s.get('eta_s'))}"
                + (f" · VRAM {s['vram_gb']:.1f} GB" if isinstance(s.get("vram_gb"), (int, float)) else ""))

    def fraction(self) -> float:
        if self.finished == "done":
            return 1.0
        step, total = self.progress()
        if not total and not self.last_step:
            step, total = self.phase_progress
        return min(1.0, (step or 0) / total) if total else 0.0

    def gallery(self) -> list[tuple[str, str]]:
        """(image path, caption) per sample, newest step first; missing files are skipped."""
        rows = [e for e in self.samples if Path(str(e.get("path", ""))).is_file()]
        rows.sort(key=lambda e: (-int(e.get("step") or 0), str(e.get("path"))))
        on = lambda e: f"{e['preview']} · " if e.get("preview") else ""  # noqa: E731 - a distilled sibling's
        return [(str(e["path"]), f"step {e.get('step')} · {on(e)}strength {e.get('strength')} · "
                                 f"{e.get('prompt', '')}") for e in rows]

    def best_files(self) -> list[dict]:
        """The saved events of the best checkpoints by validation (checkpoints/best/, lowest loss first) whose
        files still exist: Best keeps only the K lowest and deletes the rest."""
        best = [e for e in self.saved if Path(str(e.get("path", ""))).parent.name == "best"
                and Path(str(e.get("path", ""))).exists()]
        return sorted(best, key=lambda e: (_loss_in_name(e["path"]), str(e["path"])))

    def best_text(self) -> str:
        """'Best by validation: <file> (val loss 0.0412, step 1500)', the lowest first; '' without validation."""
        files = self.best_files()
        if not files:
            return ""
        first = files[0]
        name = Path(str(first["path"])).name
        loss = _loss_in_name(first["path"])
        others = len({Path(str(e["path"])).stem.split("-val_loss")[0] for e in files}) - 1
        more = f"; {others} more of the lowest are kept beside it" if others > 0 else ""
        return (f"**Best checkpoint by validation:** `{name}` (validation loss {loss:.4g}, step {first.get('step')}), "
                f"in `{Path(str(first['path'])).parent}`{more}.")

    def output_files(self) -> list[str]:
        """The saved files that still exist (older checkpoints may have been pruned by keep_last), the best by
        validation first; a saved folder (a full fine-tune, the DiT) by its weight files."""
        seen: dict[str, None] = {str(e["path"]): None for e in self.best_files() if Path(str(e["path"])).is_file()}
        for e in self.saved:
            path = Path(str(e.get("path", "")))
            if path.is_file():
                seen[str(path)] = None
            elif path.is_dir():
                seen.update((str(f), None) for f in sorted(path.rglob("*.safetensors")))
        return list(seen)
