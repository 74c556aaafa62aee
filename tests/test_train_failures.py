"""Failures reach the user as one error event in their words: out of memory, NaN, missing paths."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from engine.config.load import load_preset
from engine.config.schema import DatasetConfig, NetworkConfig, TrainingConfig
from engine.events import read_all
from engine.failures import UserError, describe, oom_savers
from engine.runs import create_run_dir
from engine.training import loop as train
from engine.training.modes import denoiser

OOM = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_oom_hint_lists_the_savers_that_are_off_cheapest_first():
    training = TrainingConfig(gradient_checkpointing=False, batch_size=4, precision="bf16")
    savers = oom_savers(training, NetworkConfig(rank=32), DatasetConfig(resolution_px=1024), "adamw")
    assert savers[0].startswith("training.gradient_checkpointing: true")
    assert any("adamw8bit" in s for s in savers)
    assert any("training.batch_size: 2 with training.grad_accum: 2" in s for s in savers)
    assert savers.index(next(s for s in savers if "adamw8bit" in s)) < \
        savers.index(next(s for s in savers if "network.rank" in s))
    already = oom_savers(TrainingConfig(gradient_checkpointing=True, batch_size=1), NetworkConfig(rank=4),
                         DatasetConfig(), "adamw8bit")
    assert not any("gradient_checkpointing" in s or "batch_size" in s or "8bit" in s for s in already)


def test_user_errors_pass_through_unchanged_and_others_get_a_hint():
    assert describe(UserError("model.path: gone", "fix it")) == ("model.path: gone", "fix it")
    message, hint = describe(RuntimeError("weird"))
    assert "RuntimeError: weird" in message and "engine.log" in hint


def test_out_of_memory_during_a_step_stops_with_the_savers(demo_preset, tmp_path, monkeypatch):
    def no_memory(r, batch):
        raise OOM

    monkeypatch.setattr(denoiser, "batch_loss", no_memory)
    preset = load_preset(demo_preset, ["sampling.prompts=[]", "training.gradient_checkpointing=false"])
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert train.run(run_dir) == 1
    error = read_all(run_dir / "events.jsonl")[-1]
    assert error["kind"] == "error" and error["message"].startswith("Out of GPU memory")
    assert "1) training.gradient_checkpointing: true" in error["hint"]
    assert "OutOfMemoryError" in error["traceback"]


def test_a_broken_preset_is_exit_code_2_with_the_key(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "preset.yaml").write_text("training:\n  batch_size: lots\n", encoding="utf-8")
    assert train.run(run_dir) == 2
    error = read_all(run_dir / "events.jsonl")[-1]
    assert error["kind"] == "error" and "training.batch_size" in error["message"]
