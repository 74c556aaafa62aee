"""Validation (a held-out split, its loss on fixed draws, the best-K files) and TensorBoard beside the events."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import urllib.request
from types import SimpleNamespace

import pytest
import torch

from engine.config.load import load_preset
from engine.events import read_all
from engine.failures import UserError
from engine.runs import create_run_dir
from engine.training import loop as train
from run_control import stop_then_resume
from support.runs import train_run

QUICK = ["sampling.prompts=[]", "dataset.repeats=1", "training.batch_size=2", "output.save_every_n_steps=2",
         "validation.fraction=0.25", "validation.keep_best=2"]


def run(demo_preset, tmp_path, *overrides):
    return train_run(demo_preset, tmp_path / "runs", *QUICK, *overrides)


def test_the_fraction_split_is_fixed_by_its_seed_and_never_takes_regularization_images(demo_preset):
    from engine.data.samples import collect_samples, split_validation

    preset = load_preset(demo_preset)
    samples = collect_samples(preset.dataset, print)
    v = SimpleNamespace(folder="", fraction=0.25, seed=1)
    train_a, held_a = split_validation(samples, preset.dataset, v, print)
    train_b, held_b = split_validation(list(reversed(samples)), preset.dataset, v, print)
    assert len(held_a) == 4 and len(train_a) == 12
    assert {s.image for s in held_a} == {s.image for s in held_b}             # the order of the files does not matter
    assert not {s.image for s in held_a} & {s.image for s in train_a}
    other = split_validation(samples, preset.dataset, SimpleNamespace(folder="", fraction=0.25, seed=2), print)[1]
    assert {s.image for s in other} != {s.image for s in held_a}
    regs = [SimpleNamespace(**{**s.__dict__, "loss_weight": 0.5}) for s in samples[:4]]
    _, held = split_validation(samples[4:] + regs, preset.dataset, v, print)
    assert all(s.loss_weight == 1.0 for s in held)
    assert split_validation(samples[:1], preset.dataset, v, print) == (samples[:1], [])  # one image: all of it trains
    with pytest.raises(UserError, match="validation.folder: the validation folder does not exist"):
        split_validation(samples, preset.dataset, SimpleNamespace(folder="/no/such/place", fraction=0, seed=1), print)


def test_a_run_reports_val_loss_and_keeps_the_k_best_files_named_by_it(demo_preset, tmp_path):
    run_dir, code, events = run(demo_preset, tmp_path, "training.max_steps=8", "optimizers.unet.lr=3e-3")
    assert code == 0, events[-1]
    vals = [e for e in events if e["kind"] == "val"]
    assert [e["step"] for e in vals] == [2, 4, 6, 8]                    # with every save, and at the end
    assert all(e["best"] == min(v["val_loss"] for v in vals[:i + 1]) for i, e in enumerate(vals))
    kept = sorted((run_dir / "checkpoints" / "best").glob("*.safetensors"))
    lowest = sorted(vals, key=lambda e: e["val_loss"])[:2]
    assert [p.name for p in kept] == sorted(f"demo-epoch{_epoch(e['step']):03d}-step{e['step']:06d}-val_loss"
                                            f"{e['val_loss']:.4f}.safetensors" for e in lowest)
    steps = [e for e in events if e["kind"] == "step"]
    assert steps[-1]["loss"] != vals[-1]["val_loss"]


def _epoch(step: int) -> int:
    return (step - 1) // 6 + 1  # 12 training images, batch 2: 6 steps an epoch


def test_the_val_loss_uses_fixed_draws_so_two_identical_runs_agree_and_a_resume_keeps_the_best(demo_preset, tmp_path,
                                                                                                 monkeypatch):
    _, _, a = run(demo_preset, tmp_path / "a", "training.max_steps=6")
    stopped = create_run_dir(load_preset(demo_preset, [*QUICK, "training.max_steps=6"]), root=tmp_path / "b")
    stop_then_resume(stopped, monkeypatch, 3)
    b = read_all(stopped / "events.jsonl")
    vals = lambda events: {e["step"]: (e["val_loss"], e["best"]) for e in events if e["kind"] == "val"}  # noqa: E731
    assert vals(a) == vals(b) and len(vals(a)) == 3                      # the resumed run knows its earlier best
    assert len(list((stopped / "checkpoints" / "best").glob("*.safetensors"))) == 2


def test_tensorboard_logs_read_back_with_tensorboards_own_reader(demo_preset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, code, events = run(demo_preset, tmp_path, "training.max_steps=4",
                                "sampling.prompts=[easeldemo a red circle]", "sampling.steps=2",
                                "sampling.strengths=[1.0]")
    assert code == 0, events[-1]
    board = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    board.Reload()
    tags = board.Tags()
    assert {"train_loss", "lr/unet", "val_loss", "val_loss_best"} <= set(tags["scalars"])
    losses = {e["step"]: e["loss"] for e in events if e["kind"] == "step"}
    assert {s.step: pytest.approx(s.value) for s in board.Scalars("train_loss")} == losses
    assert len(tags["images"]) == 1 and board.Images(tags["images"][0])[0].step == 4


def test_tensorboard_off_writes_nothing(demo_preset, tmp_path):
    run_dir, code, _ = run(demo_preset, tmp_path, "training.max_steps=2", "output.tensorboard=false")
    assert code == 0 and not (run_dir / "tensorboard").exists()


def test_the_tensorboard_command_serves_the_runs_on_localhost(demo_preset, tmp_path):
    from engine.tensorboard_view import cli, start

    run_dir, _, _ = run(demo_preset, tmp_path, "training.max_steps=2")
    url = start(run_dir.parent, port=0)
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url + "data/runs", timeout=30) as page:
        assert page.status == 200
    assert cli([str(tmp_path / "nothing here")]) == 2


def test_validation_is_the_same_when_repeated_and_changes_after_a_step(demo_preset, tmp_path):
    from engine.training.setup import setup
    from engine.training.validation import validation_loss
    from engine.events import EventWriter

    run_dir = create_run_dir(load_preset(demo_preset, [*QUICK, "training.max_steps=3",
                                                       "schedules.unet.warmup_steps=0"]), root=tmp_path / "runs")
    with EventWriter(run_dir / "events.jsonl") as events:
        r = setup(run_dir, load_preset(run_dir / "preset.yaml"), events, resume=False)
        first = validation_loss(r)
        again = validation_loss(r)
        train.optimizer_step(r, r.epoch_batches()[0:1])
        after = validation_loss(r)
    assert first == again and after != first
    assert torch.is_grad_enabled()


def test_reduce_on_plateau_watches_the_validation_loss_and_says_so(demo_preset, tmp_path):
    """A validation loss that does not improve (an LR too small to change anything) halves the LR after
    `patience` validations, the same in the step events as in the schedule; the started event says what it watches."""
    run_dir, code, events = run(demo_preset, tmp_path, "validation.fraction=0.25", "validation.every_n_steps=1",
                                "training.max_steps=6", "optimizers.unet.lr=1e-6",
                                "schedules.unet.type=ReduceLROnPlateau", "schedules.unet.warmup_steps=0",
                                "schedules.unet.params={patience: 1, "
                                "factor: 0.5, threshold: 0.01}")
    assert code == 0, events[-1]
    started = events[0]
    assert started["plateau_watches"] == "val_loss" and "validation loss" in started["plateau_watches_text"]
    lrs = [e["lr"]["unet"] for e in events if e["kind"] == "step"]
    assert lrs[:3] == [1e-6] * 3 and lrs[-1] < 1e-6 and lrs == sorted(lrs, reverse=True), lrs
