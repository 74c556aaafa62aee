"""Reflow (EveryDream2's --reflow_steps; Liu et al. 2022): the generated pairs on disk, the flow straightening
over the iterations (the 1-step vs many-step gap falls), an exact resume inside an iteration, the checks."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from engine.config.load import ConfigError, load_preset
from engine.events import read_all
from engine.runs import PROJECT_ROOT, create_run_dir
from run_control import stop_then_resume
from support.dit import DIT_PRESET as FLOW
from support.dit import TINY_DIT_RUN
from support.runs import train_run

TINY = [*TINY_DIT_RUN, "schedules.unet.type=constant", "training.reflow_steps=2", "training.reflow_gen_batches=2",
        "training.reflow_sample_steps=20"]


def start(shapes, tmp_path, *overrides):
    return train_run(FLOW, tmp_path / "runs", f"dataset.path={shapes}", *TINY, *overrides)


def test_reflow_straightens_the_flow_over_its_iterations(shapes, tmp_path):
    """A DiT trained 150 steps, then 2 reflow iterations of 30 epochs on 16 pairs each: the gap between the 1-step
    and the 20-step sample from the same noise falls at each iteration."""
    run_dir, code, events = start(shapes, tmp_path, "training.max_steps=150", "training.reflow_train_epochs=30")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    gaps = [e["straightness"] for e in events if e["kind"] == "reflow"]
    assert len(gaps) == 3 and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.5 * gaps[0], gaps
    steps = [e for e in events if e["kind"] == "step"]
    assert len(steps) == steps[-1]["total_steps"] == 150 + 2 * 30 * 2  # 2 batches an epoch
    pairs = sorted((run_dir / "reflow" / "iter01").glob("pair*.pt"))
    assert len(pairs) == 16
    pair = torch.load(pairs[0], weights_only=True)
    assert pair["noise"].shape == pair["x0"].shape == (3, 32, 32) and "class_labels" in pair["cond"]
    generating = [e for e in events if e["kind"] == "status" and e["text"].startswith("reflow 2/2: generating")]
    assert generating[-1]["n"] == generating[-1]["total"] == 16
    assert events[-1]["kind"] == "done" and (run_dir / "dit-flow-diffusers").is_dir()


def test_a_run_stopped_inside_a_reflow_iteration_resumes_exactly(shapes, tmp_path, monkeypatch):
    settings = ["training.max_steps=6", "training.reflow_train_epochs=3"]  # 6 + 2 x 6 steps; stop at step 14
    straight, code, _ = start(shapes, tmp_path / "a", *settings)
    assert code == 0
    resumed = create_run_dir(load_preset(FLOW, [f"dataset.path={shapes}", *TINY, *settings]),
                             root=tmp_path / "b" / "runs")
    stop_then_resume(resumed, monkeypatch, 14)
    events = read_all(resumed / "events.jsonl")
    assert [e["step"] for e in events if e["kind"] == "step"] == list(range(1, 19))
    name = "transformer/diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file
    a, b = load_file(str(straight / "dit-flow-diffusers" / name)), load_file(str(resumed / "dit-flow-diffusers" / name))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reflow_needs_a_flow_objective_and_counts_in_the_plan(shapes):
    with pytest.raises(ConfigError) as e:
        load_preset(PROJECT_ROOT / "presets" / "dit-ddpm.yaml", ["training.reflow_steps=1"])
    assert "training.reflow_steps" in [key for key, _ in e.value.problems]
    from engine.data.plan import plan_of

    preset = load_preset(FLOW, [f"dataset.path={shapes}", *TINY, "training.max_steps=10",
                                "training.reflow_train_epochs=3"])
    assert plan_of(preset).total_steps == 10 + 2 * 3 * 2
