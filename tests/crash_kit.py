"""The crash battery's parts: start an engine in a child process, SIGKILL it at a chosen moment, then check what
it left (every file loads) and that the run finishes with the result of a run that was never killed.

Used by tests/test_crash_battery.py (a few chosen moments) and bench/crash_battery.py (N random ones).
Moments: caching (the 3rd latent being encoded), mid-step (inside step 3), checkpoint (the step-3 LoRA written
but not yet in place), state (the same for the resume state), or a number: seconds after the engine's first event.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# 16 demo images, batch 4, 4 steps per epoch; a checkpoint and a resume state at every step
SETTINGS = ["sampling.prompts=[]", "training.max_steps=5", "training.batch_size=4", "dataset.repeats=1",
            "output.save_every_n_steps=1", "output.keep_last=2", "output.formats=[kohya]",
            "dataset.caption_dropout=0.2", "training.noise_offset=0.05"]
MOMENTS = ("caching", "mid-step", "checkpoint", "state")

# The child: the engine with one function wrapped so that it stops dead at the moment (and says so in a marker
# file, so the parent kills it exactly there). Nothing else differs from `python -m engine train RUN_DIR`.
CHILD = r"""
import sys, time
from pathlib import Path
run_dir, moment, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def hang():
    marker.write_text("here", encoding="utf-8")
    time.sleep(600)

if moment == "caching":
    import engine.data.cache as cache
    real, calls = cache._load_or_encode, []
    def slow(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            hang()
        return real(*args, **kwargs)
    cache._load_or_encode = slow
elif moment == "mid-step":
    import engine.training.modes.denoiser as denoiser
    real = denoiser.batch_loss
    def slow(r, batch):
        if r.step == 2:
            hang()
        return real(r, batch)
    denoiser.batch_loss = slow
elif moment in ("checkpoint", "state"):
    import engine.atomic as atomic
    import engine.training.checkpoints as ckpt
    real = atomic.atomic_write
    def wrapped(path, write):
        name = Path(path).name
        hit = "step000003" in name if moment == "checkpoint" else (name == "state.pt" and marker.with_suffix(".n").exists())
        if name == "state.pt":
            marker.with_suffix(".n").write_text("", encoding="utf-8")  # the 2nd state write onwards
        def slow(tmp):
            write(tmp)
            if hit:
                hang()
        return real(path, slow)
    atomic.atomic_write = wrapped
    ckpt.atomic_write = wrapped
else:
    marker.write_text("started", encoding="utf-8")
from engine.training import loop
sys.exit(loop.run(run_dir))
"""


def kill_at(run_dir: Path, moment: str, timeout_s: float = 300) -> bool:
    """Train run_dir in a child process and SIGKILL it at `moment`; False if the run ended before that."""
    marker = run_dir.parent / f"{run_dir.name}.marker"
    delay = None if moment in MOMENTS else float(moment)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    with open(run_dir.parent / f"{run_dir.name}.child.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), moment, str(marker)], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        # a moment: its marker; a delay: counted from the engine's first event (after the imports)
        started = marker if delay is None else run_dir / "events.jsonl"
        while not (started.exists() and started.stat().st_size) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        until = time.monotonic() + (delay or 0.0)
        while delay is not None and proc.poll() is None and time.monotonic() < until:
            time.sleep(0.02)
        ended = proc.poll() is not None
        proc.kill()
        proc.wait()
    return not ended


def broken_files(run_dir: Path) -> list[str]:
    """Every file a user or a resume would read, that does not read back whole."""
    import torch
    from safetensors import safe_open

    broken = []
    for path in run_dir.rglob("*.safetensors"):
        try:
            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        except Exception as e:  # noqa: BLE001
            broken.append(f"{path.name}: {e}")
    state = run_dir / "state" / "state.pt"
    if state.exists():
        try:
            torch.load(state, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            broken.append(f"state.pt: {e}")
    lines = (run_dir / "events.jsonl").read_bytes().split(b"\n") if (run_dir / "events.jsonl").exists() else []
    for line in lines[:-1]:  # the last one may be cut mid-line by the kill; the reader skips it
        try:
            json.loads(line)
        except ValueError:
            broken.append(f"events.jsonl line: {line[:60]!r}")
    return broken


def finish(run_dir: Path) -> int:
    """Carry on as a user would: resume when there is a state, else start the run again."""
    from engine.training import loop

    return loop.run(run_dir, resume=(run_dir / "state" / "state.pt").is_file())


def final_weights(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "state" / "state.pt", map_location="cpu", weights_only=False)["weights"]


def same_weights(a: dict, b: dict, atol: float = 1e-6) -> bool:
    import torch

    return a.keys() == b.keys() and all(a[c].keys() == b[c].keys() and all(
        torch.allclose(a[c][n], b[c][n], atol=atol) for n in a[c]) for c in a)
