"""A run in this process, as the GUI would start it but without the subprocess: a preset file plus `--set`
overrides -> a run folder -> the training loop -> the events it wrote. Most end-to-end tests are one such run and a
look at its events and files."""
from __future__ import annotations

from pathlib import Path


def train_run(preset, root: Path, *overrides: str, env: dict | None = None, before=None, run=None):
    """Train `preset` (a preset file) with `overrides` ("key=value", as --set takes them) and `env` (the guide's
    variables: MAX_STEPS, DATA_DIR, ...) in a new run folder under `root`; returns (run_dir, exit code, events).
    before(run_dir): called once the folder exists, before the engine starts (a control file dropped in early).
    run(run_dir) -> exit code: what trains it (default: engine.training.loop.run, looked up at call time so that a
    test's monkeypatch of the loop module applies)."""
    from engine.config.load import load_preset
    from engine.events import read_all
    from engine.runs import create_run_dir

    run_dir = create_run_dir(load_preset(preset, list(overrides), env=env), root=root)
    if before is not None:
        before(run_dir)
    if run is None:
        from engine.training import loop

        run = loop.run
    code = run(run_dir)
    return run_dir, code, read_all(run_dir / "events.jsonl")


def errors(events: list[dict]) -> list[dict]:
    return [e for e in events if e["kind"] == "error"]


def losses(events: list[dict]) -> list[float]:
    """The loss of every step, in order."""
    return [e["loss"] for e in events if e["kind"] == "step"]
