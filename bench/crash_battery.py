"""The crash battery: N SIGKILLs at random moments of a training run, then what a user would do next.

    python bench/crash_battery.py 20            # 20 kills; prints the counts and each trial's line
    python bench/crash_battery.py 5 --seed 3

Each trial starts the demo's tiny SD1.5 run (a checkpoint and resume state every step) in a child process, kills
it after a random delay between its first event and the run's usual end (model loading, caching, steps and
saves all get hit), checks that every file left reads back whole, resumes (or starts again when no state was saved yet) and
compares the final weights with a run that was never killed. Prints: corrupt files, failed resumes, mismatches.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crash_kit import SETTINGS, broken_files, final_weights, finish, kill_at, same_weights  # noqa: E402


def last_phase(run_dir: Path) -> str:
    """Where the killed run was: its last event (loading, caching, step N, saving ...), or 'starting'."""
    from engine.events import read_all

    events = read_all(run_dir / "events.jsonl") if (run_dir / "events.jsonl").exists() else []
    if not events:
        return "starting (imports)"
    last = events[-1]
    if last["kind"] == "step":
        return f"after step {last['step']}"
    return last.get("phase", last["kind"]) + (f" {last['n']}/{last['total']}" if "total" in last else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="how many kills")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from engine.config.load import load_preset
    from engine.demo import prepare
    from engine.events import read_all
    from engine.runs import create_run_dir
    from engine.training import loop

    rng = random.Random(args.seed)
    counts = {"killed": 0, "ended before the kill": 0, "corrupt files": 0, "failed resumes": 0, "mismatches": 0}
    with tempfile.TemporaryDirectory(prefix="easel-crash-") as tmp:
        root = Path(tmp)
        preset = load_preset(prepare(root / "demo"), SETTINGS)
        straight = create_run_dir(preset, root=root / "straight")
        with contextlib.redirect_stdout(io.StringIO()):
            assert loop.run(straight) == 0
        reference = final_weights(straight)
        calibration = create_run_dir(preset, root=root / "calibration")  # one whole run in a child process
        kill_at(calibration, "1e9")
        times = [e["t"] for e in read_all(calibration / "events.jsonl")]
        span = times[-1] - times[0]  # from `started` to `done`: loading, caching, steps, saves
        print(f"a run takes {span:.1f} s from its first event to `done`; kills fall uniformly within it", flush=True)
        for trial in range(args.n):
            delay = rng.uniform(0.0, span)
            run_dir = create_run_dir(preset, root=root / f"trial{trial}")
            if not kill_at(run_dir, f"{delay:.2f}"):
                counts["ended before the kill"] += 1
            counts["killed"] += 1
            reached = last_phase(run_dir)
            broken = broken_files(run_dir)
            counts["corrupt files"] += bool(broken)
            with contextlib.redirect_stdout(io.StringIO()):
                resumed = finish(run_dir) == 0
            counts["failed resumes"] += not resumed
            same = resumed and same_weights(final_weights(run_dir), reference)
            counts["mismatches"] += resumed and not same
            print(f"trial {trial:3d}: killed at {delay:5.2f} s ({reached:<22})  files "
                  f"{'ok' if not broken else broken}  finish {'ok' if resumed else 'FAILED'}  "
                  f"result {'same' if same else 'DIFFERENT'}", flush=True)
    print("; ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0 if counts["corrupt files"] == counts["failed resumes"] == counts["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
