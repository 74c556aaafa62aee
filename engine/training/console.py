"""engine.log: the run's stdout, one human line per event (the GUI reads events.jsonl; a person reads this file
or the console). Step lines are thinned to output.log_every_n_steps; everything else is always written.
"""
from __future__ import annotations


class ConsoleLog:
    """engine.log's lines: every event but steps, and a step line every `every` steps (and the first and last)."""

    def __init__(self, every: int = 1):
        self.every = every

    def __call__(self, event: dict) -> None:
        if event["kind"] == "step" and self.every > 1 and event["step"] % self.every and \
                event["step"] not in (1, event["total_steps"]):
            return
        console_line(event)


def console_line(event: dict) -> None:
    """One human line per event on stdout (engine.log), the rest is in events.jsonl."""
    kind = event["kind"]
    if kind == "step":
        lrs = " ".join(f"{c}={v:.3g}" for c, v in event["lr"].items())
        text = (f"step {event['step']}/{event['total_steps']}  epoch {event['epoch']}  loss {event['loss']:.4f}  "
                f"lr {lrs}  {event['s_per_it']:.3f} s/it  eta {event['eta_s']:.0f} s")
    elif kind == "status":
        progress = f" {event['n']}/{event['total']}" if "total" in event else ""
        text = f"[{event['phase']}] {event['text']}{progress}"
    elif kind in ("warning", "error"):
        text = f"{kind.upper()}: {event['message']}" + (f"\n  hint: {event['hint']}" if event.get("hint") else "")
    elif kind == "val":
        text = f"validation at step {event['step']}: val_loss {event['val_loss']:.4f}  (best {event['best']:.4f})"
    elif kind == "rl":
        text = (f"RL epoch {event['rl_epoch']}: reward {event['reward_mean']:.4g} +- {event['reward_std']:.3g} over "
                f"{event['images']} images (min {event['reward_min']:.4g}, max {event['reward_max']:.4g})")
    elif kind in ("saved", "sample"):
        text = f"{kind}: {event['path']}"
    else:
        text = kind
    try:
        print(text, flush=True)
    except UnicodeEncodeError:  # Windows writes a redirected stdout in the ANSI code page; a path may not fit
        print(text.encode("ascii", "backslashreplace").decode("ascii"), flush=True)
