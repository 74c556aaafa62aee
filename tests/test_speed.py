"""The step without waste (issue: speed on the GPU), as far as a CPU can show it: one host sync per optimizer step
whatever grad_accum is, the auto batch size search, channels_last UNets, the compile option and its timer."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from engine.config.load import load_preset
from engine.events import read_all
from engine.runs import create_run_dir
from engine.training import loop as train
from engine.training.modes import denoiser as denoiser_phase
from engine.training import speed
from support.runs import train_run

QUICK = ["sampling.prompts=[]", "output.save_every_n_steps=0", "dataset.repeats=1", "training.batch_size=2"]


def syncs_per_step(demo_preset, tmp_path, monkeypatch, accum: int) -> float:
    """Host syncs (Tensor.item / .tolist) that Easel's own code makes inside optimizer_step, per step (torch's CPU
    optimizers read their step counters with .item(); on CUDA they do not, so those are not counted)."""
    import sys

    engine_dir = str(Path(train.__file__).resolve().parents[1])
    counted = {"n": 0}
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, **k):
            if sys._getframe(1).f_code.co_filename.startswith(engine_dir):
                counted["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    real_step = train.optimizer_step
    inside = {"n": 0}

    def step(r, group):
        before = counted["n"]
        out = real_step(r, group)
        inside["n"] += counted["n"] - before
        return out

    monkeypatch.setattr(train, "optimizer_step", step)
    run_dir = create_run_dir(load_preset(demo_preset, [*QUICK, "training.max_steps=3", f"training.grad_accum={accum}"]),
                             root=tmp_path / f"accum{accum}")
    assert train.run(run_dir) == 0
    monkeypatch.undo()
    return inside["n"] / 3


def test_one_host_sync_per_optimizer_step_whatever_the_accumulation(demo_preset, tmp_path, monkeypatch):
    one = syncs_per_step(demo_preset, tmp_path, monkeypatch, accum=1)
    four = syncs_per_step(demo_preset, tmp_path, monkeypatch, accum=4)
    assert one == four == 1  # the old loop synced once per micro-batch (loss.item() after every backward)


def test_a_nan_in_any_micro_batch_still_stops_before_the_weights_change(demo_preset, tmp_path, monkeypatch):
    real = denoiser_phase.batch_loss
    calls = {"n": 0}

    def second_micro_batch_nan(r, batch):
        calls["n"] += 1
        loss = real(r, batch)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(denoiser_phase, "batch_loss", second_micro_batch_nan)
    run_dir = create_run_dir(load_preset(demo_preset, [*QUICK, "training.max_steps=2", "training.grad_accum=3"]),
                             root=tmp_path / "runs")
    assert train.run(run_dir) == 1
    error = read_all(run_dir / "events.jsonl")[-1]
    assert error["kind"] == "error" and "at step 1" in error["message"]
    assert not list(run_dir.glob("*.safetensors"))


def test_auto_batch_size_finds_the_largest_batch_under_the_headroom():
    def model(n):  # 50 MB fixed + 100 MB per image; OOM from 12 images up, as a real card would
        if n >= 12:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return (50 + 100 * n) * 2**20

    tried = []
    n, peak = speed.largest_fitting_batch(lambda k: tried.append(k) or model(k), limit_bytes=1000 * 2**20)
    assert n == 8 and peak == 850 * 2**20  # 9 needs 950 MB: over 90 % of 1000
    assert tried == [1, 2, 4, 8, 16, 12, 10, 9]  # doubling, then bisection: a few probes, not 64
    assert speed.largest_fitting_batch(lambda k: model(k + 20), 1000 * 2**20) == (0, 0)
    with pytest.raises(ValueError):  # any other failure is a real error, not "does not fit"
        speed.largest_fitting_batch(lambda k: (_ for _ in ()).throw(ValueError("shape")), 1000 * 2**20)


def test_auto_batch_size_without_a_gpu_says_so_and_keeps_the_batch(demo_preset, tmp_path):
    _, code, events = train_run(demo_preset, tmp_path / "runs", *QUICK, "training.max_steps=1",
                                "training.auto_batch_size=true")
    assert code == 0
    assert any("auto_batch_size needs a CUDA GPU" in e.get("message", "") for e in events)
    assert [e for e in events if e["kind"] == "step"][0]["step"] == 1


def test_unets_go_channels_last_and_transformers_stay(tiny_model):
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model("sd15"), subfolder="unet")
    assert speed.prefer_channels_last(unet)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    flux = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                  in_channels=16, joint_attention_dim=32, pooled_projection_dim=32,
                                  axes_dims_rope=[4, 4, 8])
    assert not speed.prefer_channels_last(flux)


def test_compile_compiles_the_repeated_blocks_and_reports_the_one_off_time(demo_preset, tmp_path, monkeypatch):
    from engine.training import placement

    compiled = []

    def eager_compile(denoiser):  # the real regional compilation; the eager backend skips C++ codegen (minutes on CI)
        denoiser.compile_repeated_blocks(fullgraph=False, backend="eager")
        compiled.append(type(denoiser).__name__)
        return True

    monkeypatch.setattr(placement, "compile_repeated_blocks", eager_compile)
    run_dir = create_run_dir(load_preset(demo_preset, [*QUICK, "training.max_steps=6", "training.compile=true"]),
                             root=tmp_path / "runs")
    assert train.run(run_dir) == 0
    events = read_all(run_dir / "events.jsonl")
    assert compiled == ["UNet2DConditionModel"]
    assert any(e["kind"] == "status" and "one-off compile time" in e["text"] for e in events)


def test_compile_timer_is_the_first_steps_extra_time():
    said = []
    timer = speed.CompileTimer(said.append, steps=3)
    for seconds in (30.0, 1.0, 1.2, 0.9, 5.0):
        timer.add(seconds)
    assert said == [29.0]
