"""A run stopped at step k (through control/stop) and resumed ends exactly where an uninterrupted run ends."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from engine.config.load import load_preset
from engine.events import read_all
from engine.runs import create_run_dir
from engine.training import loop as train
from run_control import stop_at

# Everything that draws randomness or carries state across steps is on: caption dropout, noise offset, min-SNR,
# LoRA dropout, gradient accumulation, a warmup + cosine schedule, an epoch boundary inside the run.
SETTINGS = ["sampling.prompts=[]", "training.max_steps=6", "training.batch_size=4", "training.grad_accum=2",
            "dataset.repeats=1", "dataset.caption_dropout=0.3", "training.noise_offset=0.05",
            "training.min_snr_gamma=5", "network.dropout=0.1", "schedules.unet.type=cosine",
            "schedules.unet.warmup_steps=2", "output.save_every_n_steps=0", "output.formats=[kohya]",
            "training.ema.enabled=true", "training.ema.decay=0.9"]
STOP_AT = 3  # 16 images / batch 4 / accum 2 = 2 steps per epoch: step 3 is in the middle of epoch 2


def _state(run_dir):
    return torch.load(run_dir / "state" / "state.pt", weights_only=False)


def run_until_stopped(run_dir, monkeypatch):
    """Train run_dir, pressing the GUI's Stop button (the control file) during step STOP_AT."""
    real_report = train.report_step
    stop_at(monkeypatch, STOP_AT)
    assert train.run(run_dir) == 0
    monkeypatch.setattr(train, "report_step", real_report)


def test_stop_then_resume_equals_an_uninterrupted_run(demo_preset, tmp_path, monkeypatch):
    preset = load_preset(demo_preset, SETTINGS)

    straight = create_run_dir(preset, root=tmp_path / "a")
    assert train.run(straight) == 0

    interrupted = create_run_dir(preset, root=tmp_path / "b")
    run_until_stopped(interrupted, monkeypatch)
    events = read_all(interrupted / "events.jsonl")
    assert events[-1] == {**events[-1], "kind": "stopped", "step": STOP_AT}

    assert train.run(interrupted, resume=True) == 0
    events = read_all(interrupted / "events.jsonl")
    resumed_steps = [e["step"] for e in events if e["kind"] == "step"]
    assert resumed_steps == [1, 2, 3, 4, 5, 6] and events[-1]["kind"] == "done"

    losses = lambda run: {e["step"]: e["loss"] for e in read_all(run / "events.jsonl") if e["kind"] == "step"}  # noqa
    assert losses(interrupted) == pytest.approx(losses(straight), rel=1e-5)
    lrs = lambda run: [e["lr"]["unet"] for e in read_all(run / "events.jsonl") if e["kind"] == "step"]  # noqa
    assert lrs(interrupted) == pytest.approx(lrs(straight))
    a, b = _state(straight), _state(interrupted)
    for comp in a["weights"]:
        for name in a["weights"][comp]:
            assert torch.allclose(a["weights"][comp][name], b["weights"][comp][name], atol=1e-6), name
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a["ema"], b["ema"]))


def test_ema_follows_the_weights_and_is_swapped_in_only_while_saving():
    from engine.training.checkpoints import Ema

    p = torch.nn.Parameter(torch.zeros(3))
    ema = Ema([p], decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()
    ema.update()
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.75))  # 0 -> 0.5 -> 0.75
    with ema.applied():
        assert torch.allclose(p, torch.full((3,), 0.75))
    assert torch.equal(p.detach(), torch.ones(3))


def test_resume_without_state_says_so(demo_preset, tmp_path):
    preset = load_preset(demo_preset, SETTINGS)
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert train.run(run_dir, resume=True) == 1
    error = read_all(run_dir / "events.jsonl")[-1]
    assert error["kind"] == "error" and "Nothing to resume" in error["message"]


def test_resuming_a_finished_run_changes_nothing(demo_preset, tmp_path):
    preset = load_preset(demo_preset, [*SETTINGS, "training.max_steps=2"])
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert train.run(run_dir) == 0
    before = (run_dir / "demo.safetensors").stat().st_mtime_ns
    assert train.run(run_dir, resume=True) == 0
    events = read_all(run_dir / "events.jsonl")
    assert events[-1]["kind"] == "done" and "already finished" in events[-2]["text"]
    assert (run_dir / "demo.safetensors").stat().st_mtime_ns == before


def _stopped_run(demo_preset, tmp_path, monkeypatch, overrides):
    preset = load_preset(demo_preset, [*SETTINGS, *overrides])
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    run_until_stopped(run_dir, monkeypatch)
    return run_dir


def _edit_run_preset(run_dir, **sections):
    from engine.config.load import preset_from_dict
    from engine.config.save import preset_to_dict, save_preset

    data = preset_to_dict(load_preset(run_dir / "preset.yaml"))
    for section, values in sections.items():
        node = data
        *parents, last = section.split(".")
        for part in parents:
            node = node[part]
        node[last] = values
    save_preset(preset_from_dict(data), run_dir / "preset.yaml")


def test_resume_with_another_optimizer_type_warns_and_starts_it_fresh(demo_preset, tmp_path, monkeypatch):
    run_dir = _stopped_run(demo_preset, tmp_path, monkeypatch, [])
    _edit_run_preset(run_dir, **{"optimizers.unet": {"type": "sgd", "lr": 1e-3, "momentum": 0.9}})
    assert train.run(run_dir, resume=True) == 0
    warnings = [e["message"] for e in read_all(run_dir / "events.jsonl") if e["kind"] == "warning"]
    assert any("the saved run used AdamW" in w and "SGD starts with fresh state" in w for w in warnings), warnings


def test_preserve_lr_keeps_the_saved_learning_rate_when_the_schedule_changed(demo_preset, tmp_path, monkeypatch):
    run_dir = _stopped_run(demo_preset, tmp_path, monkeypatch, ["schedules.unet.type=constant",
                                                                "schedules.unet.warmup_steps=0",
                                                                "optimizers.unet.lr=1e-3"])
    _edit_run_preset(run_dir, **{"optimizers.unet.lr": 5e-4, "training.preserve_lr": True})
    assert train.run(run_dir, resume=True) == 0
    lrs = [e["lr"]["unet"] for e in read_all(run_dir / "events.jsonl") if e["kind"] == "step"]
    assert lrs[STOP_AT:] == pytest.approx([1e-3] * (6 - STOP_AT))


def test_a_finished_run_extended_equals_a_longer_run(demo_preset, tmp_path):
    """Raising max_steps in a finished run's preset.yaml and resuming continues its LoRA, not a fresh one."""
    constant = [*SETTINGS, "schedules.unet.type=constant", "schedules.unet.warmup_steps=0"]  # the same LR either way
    longer = create_run_dir(load_preset(demo_preset, [*constant, "training.max_steps=12"]), root=tmp_path / "a")
    assert train.run(longer) == 0

    extended = create_run_dir(load_preset(demo_preset, [*constant, "training.max_steps=6"]), root=tmp_path / "b")
    assert train.run(extended) == 0
    assert _state(extended)["weights"]["unet.0"], "the finished run's state holds its LoRA"
    _edit_run_preset(extended, **{"training.max_steps": 12})
    assert train.run(extended, resume=True) == 0

    steps = [e for e in read_all(extended / "events.jsonl") if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 13))
    losses = lambda run: [e["loss"] for e in read_all(run / "events.jsonl") if e["kind"] == "step"]  # noqa
    assert losses(extended) == pytest.approx(losses(longer), rel=1e-5)
    a, b = _state(longer)["weights"], _state(extended)["weights"]
    assert a.keys() == b.keys()
    for comp in a:
        for name in a[comp]:
            assert torch.allclose(a[comp][name], b[comp][name], atol=1e-6), name


def test_going_back_to_an_older_checkpoint_equals_the_run_from_there(demo_preset, tmp_path):
    """Every kept checkpoint has its own resume state (EveryDream2 resumes from any of its ckpts folders): a finished
    run resumed from checkpoints/<name>-step000002 trains steps 3..6 again and ends with the same LoRA; keep_last
    prunes the states with their files."""
    from safetensors.torch import load_file

    from engine.cli import train as cli_train

    preset = load_preset(demo_preset, [*SETTINGS, "output.save_every_n_steps=2", "output.keep_last=2"])
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert train.run(run_dir) == 0
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.state.pt")) == ["demo-step000002.state.pt",
                                                                       "demo-step000004.state.pt"]
    before = load_file(str(run_dir / "demo.safetensors"))

    assert cli_train(["--resume", str(checkpoints / "demo-step000002.safetensors")]) == 0
    events = read_all(run_dir / "events.jsonl")
    resumed = events[max(i for i, e in enumerate(events) if e["kind"] == "started"):]
    assert [e["step"] for e in resumed if e["kind"] == "step"] == [3, 4, 5, 6]
    after = load_file(str(run_dir / "demo.safetensors"))
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_checkpoint_without_its_own_state_says_how_to_resume(demo_preset, tmp_path, capsys):
    from engine.cli import train as cli_train

    preset = load_preset(demo_preset, [*SETTINGS, "training.max_steps=2", "output.save_every_n_steps=1"])
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert train.run(run_dir) == 0
    (run_dir / "checkpoints" / "demo-step000001.state.pt").unlink()  # as an older Easel left it
    assert cli_train(["--resume", str(run_dir / "checkpoints" / "demo-step000001.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "demo-step000001.safetensors has no resume state" in err and f"--resume {run_dir}" in err
