"""SIGKILL at the worst moments (while caching, inside a step, while a checkpoint and while the resume state are
written): every file left loads, and the run then finishes exactly as one that was never killed."""
from __future__ import annotations

import os

import pytest

from crash_kit import MOMENTS, SETTINGS, broken_files, final_weights, finish, kill_at, same_weights
from engine.config.load import load_preset
from engine.events import read_all
from engine.runs import create_run_dir
from engine.training import loop as train

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL is a POSIX signal")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_preset):
    root = tmp_path_factory.mktemp("crash")
    preset = load_preset(demo_preset, SETTINGS)
    straight = create_run_dir(preset, root=root / "straight")
    assert train.run(straight) == 0
    return preset, root, final_weights(straight)


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_kill_leaves_only_whole_files_and_the_run_finishes_as_if_never_killed(setup, moment):
    preset, root, reference = setup
    run_dir = create_run_dir(preset, root=root / moment)
    assert kill_at(run_dir, moment), f"the run ended before the {moment} moment"
    assert broken_files(run_dir) == []
    if moment == "checkpoint":  # killed between writing name.tmp and moving it into place
        assert (run_dir / "checkpoints" / "demo-step000003.safetensors.tmp").is_file()
        assert not (run_dir / "checkpoints" / "demo-step000003.safetensors").exists()
    if moment == "state":
        assert (run_dir / "state" / "state.pt.tmp").is_file()  # and the previous state.pt still loads (above)
    if moment in ("mid-step", "checkpoint", "state"):
        assert (run_dir / "state" / "state.pt").is_file(), "an earlier step's state must survive the kill"
    assert finish(run_dir) == 0, read_all(run_dir / "events.jsonl")[-1]
    assert broken_files(run_dir) == [] and not list(run_dir.rglob("*.tmp"))
    assert same_weights(final_weights(run_dir), reference)
    warnings = [e["message"] for e in read_all(run_dir / "events.jsonl") if e["kind"] == "warning"]
    assert any("no longer running" in w for w in warnings), "the killed engine's lock is taken over"
