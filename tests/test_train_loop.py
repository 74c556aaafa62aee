"""engine.training.loop.run end to end on tiny models, in-process: events, files, control files, families."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors import safe_open

from engine.config.load import load_preset
from engine.training import loop as train
from engine.training.modes import denoiser
from support.runs import train_run

FAST = ["sampling.prompts=[]", "training.max_steps=4", "output.save_every_n_steps=0", "dataset.repeats=1"]


def start(preset_path, tmp_path, *overrides, before=None):
    return train_run(preset_path, tmp_path / "runs", *FAST, *overrides, before=before)


def kinds(events):
    return [e["kind"] for e in events]


def test_a_run_streams_events_and_ends_with_loras_in_both_formats(demo_preset, tmp_path):
    run_dir, code, events = start(demo_preset, tmp_path, "training.max_steps=6", "output.save_every_n_steps=2",
                                  "output.keep_last=1", "output.formats=[kohya,diffusers]")
    assert code == 0, events[-1]
    assert kinds(events)[0] == "started" and kinds(events)[-1] == "done"
    assert events[0]["device"].startswith("cpu") and "torch" in events[0]["versions"]
    caching = [e for e in events if e["kind"] == "status" and e["phase"] == "caching"]
    assert caching[-1]["n"] == caching[-1]["total"] > 0
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6] and steps[-1]["total_steps"] == 6
    assert set(steps[-1]["lr"]) == {"unet"} and steps[-1]["eta_s"] == 0 and steps[-1]["loss"] > 0
    saved = [(e["format"], e["step"]) for e in events if e["kind"] == "saved"]
    assert saved == [("kohya", 2), ("diffusers", 2), ("kohya", 4), ("diffusers", 4), ("kohya", 6), ("diffusers", 6)]
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["demo-step000004.diffusers.safetensors", "demo-step000004.safetensors",
                    "demo-step000004.state.pt"]  # keep_last=1, with its resume state
    with safe_open(str(run_dir / "demo.safetensors"), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "8" and f.metadata()["ss_base_model_version"] == "sd_v1"
        assert any(k.startswith("lora_unet_") for k in f.keys())
    assert (run_dir / "demo.diffusers.safetensors").is_file()


def test_control_files_are_acted_on_at_the_next_step_and_deleted(demo_preset, tmp_path):
    def ask(run_dir):
        (run_dir / "control" / "save_now").touch()

    run_dir, code, events = start(demo_preset, tmp_path, before=ask)
    assert code == 0
    assert [e["step"] for e in events if e["kind"] == "saved"][:1] == [1]
    assert not (run_dir / "control" / "save_now").exists()

    run_dir, code, events = start(demo_preset, tmp_path, before=lambda d: (d / "control" / "stop").touch())
    assert code == 0 and kinds(events)[-1] == "stopped" and events[-1]["step"] == 1
    assert (run_dir / "state" / "state.pt").is_file() and not (run_dir / "control" / "stop").exists()
    assert "done" not in kinds(events)


def test_a_stop_that_arrives_with_the_last_step_still_writes_the_final_lora(demo_preset, tmp_path):
    run_dir, code, events = start(demo_preset, tmp_path, "training.max_steps=1",
                                  before=lambda d: (d / "control" / "stop").touch())
    assert code == 0 and kinds(events)[-1] == "done" and "stopped" not in kinds(events)
    assert (run_dir / "demo.safetensors").is_file() and not (run_dir / "control" / "stop").exists()


def test_nan_loss_stops_naming_the_files_and_keeps_the_last_checkpoint(demo_preset, tmp_path, monkeypatch):
    real = denoiser.batch_loss

    def blow_up(r, batch):
        loss = real(r, batch)
        return loss * float("nan") if r.step >= 2 else loss

    monkeypatch.setattr(denoiser, "batch_loss", blow_up)
    run_dir, code, events = start(demo_preset, tmp_path, "output.save_every_n_steps=2")
    assert code == 1
    error = events[-1]
    assert error["kind"] == "error" and "step 3" in error["message"] and ".png" in error["message"]
    assert "learning rate" in error["hint"] and "Traceback" in error["traceback"]
    assert (run_dir / "checkpoints" / "demo-step000002.safetensors").is_file()
    assert (run_dir / "state" / "state.pt").is_file()


def test_a_missing_dataset_is_one_clear_error(demo_preset, tmp_path):
    run_dir, code, events = start(demo_preset, tmp_path, f"dataset.path={tmp_path / 'no such folder'}")
    assert code == 1
    error = events[-1]
    assert error["kind"] == "error" and "dataset.path" in error["message"] and "no such folder" in error["message"]
    assert error["hint"]


def test_epochs_mode_runs_whole_epochs_and_saves_per_epoch(demo_preset, tmp_path):
    # 16 images, batch 4, grad_accum 2 -> 4 batches = 2 optimizer steps per epoch
    run_dir, code, events = start(demo_preset, tmp_path, "training.max_steps=0", "training.max_epochs=2",
                                  "training.grad_accum=2", "output.save_every_n_epochs=1")
    assert code == 0
    steps = [e for e in events if e["kind"] == "step"]
    assert [(e["step"], e["epoch"]) for e in steps] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert [e["step"] for e in events if e["kind"] == "saved" and e["format"] == "kohya"] == [2, 4]


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_other_families_train_with_text_encoder_lora(demo_preset, tmp_path, tiny_model, family):
    model = tiny_model(family)
    run_dir, code, events = start(demo_preset, tmp_path, f"model.family={family}", f"model.path={model}",
                                  "network.train_text_encoder=true", "training.gradient_checkpointing=true",
                                  "schedules.unet.warmup_steps=0", "schedules.text_encoder.type=constant",
                                  "training.max_steps=2", "output.formats=[kohya]",
                                  "sampling.prompts=[easeldemo a red circle]", "sampling.steps=2",
                                  "sampling.strengths=[1.0]")
    assert code == 0, events[-1]
    samples = [e for e in events if e["kind"] == "sample"]
    assert len(samples) == 1 and samples[0]["step"] == 2 and os.path.isfile(samples[0]["path"])
    lrs = [e["lr"] for e in events if e["kind"] == "step"][-1]
    assert lrs["text_encoder"] == pytest.approx(0.4 * lrs["unet"])
    with safe_open(str(run_dir / "demo.safetensors"), "pt") as f:
        prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in f.keys()}
        meta = f.metadata()
    expected = {"sd2": {"lora_unet", "lora_te"}, "sdxl": {"lora_unet", "lora_te1", "lora_te2"}}[family]
    assert prefixes == expected
    assert meta["ss_v_parameterization"] == str(family == "sd2")


def test_full_fine_tune_saves_a_diffusers_folder_with_changed_weights(demo_preset, tmp_path):
    from diffusers import UNet2DConditionModel

    run_dir, code, events = start(demo_preset, tmp_path, "network.type=full", "training.max_steps=2",
                                  "optimizers.unet.lr=1e-3")
    assert code == 0, events[-1]
    saved = [e for e in events if e["kind"] == "saved"]
    assert [e["format"] for e in saved] == ["diffusers-folder"]
    trained = UNet2DConditionModel.from_pretrained(saved[0]["path"], subfolder="unet")
    base = UNet2DConditionModel.from_pretrained(load_preset(demo_preset).model.path, subfolder="unet")
    assert not torch.equal(trained.conv_in.weight, base.conv_in.weight)


def test_init_from_continues_an_existing_lora(demo_preset, tmp_path):
    first, code, _ = start(demo_preset, tmp_path, "training.max_steps=2", "output.formats=[kohya]")
    assert code == 0
    # learning rate 0: the run must save exactly the LoRA it started from
    second, code, events = start(demo_preset, tmp_path, "training.max_steps=1", "output.formats=[kohya]",
                                 f"network.init_from={first / 'demo.safetensors'}", "optimizers.unet.lr=0")
    assert code == 0, events[-1]
    from safetensors.torch import load_file

    before, after = load_file(first / "demo.safetensors"), load_file(second / "demo.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-3) for k in before)
    assert any(before[k].abs().sum() > 0 for k in before if "lora_up" in k)  # the first run really trained


def test_the_console_gets_a_step_line_every_n_steps_and_the_events_every_step(demo_preset, tmp_path, capsys):
    """output.log_every_n_steps (FluxFlow's --log_interval, EveryDream2's log_step)."""
    _, code, events = start(demo_preset, tmp_path, "training.max_steps=7", "output.log_every_n_steps=3")
    assert code == 0
    printed = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert printed == ["1/7", "3/7", "6/7", "7/7"]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3, 4, 5, 6, 7]


def test_samples_show_the_ema_weights_when_the_ema_is_on(demo_preset, tmp_path):
    """With decay 1.0 the average never leaves the starting weights: the last samples are the base model's (the
    step-0 samples), pixel for pixel, while the raw weights trained on. Without EMA they differ."""
    import numpy as np
    from PIL import Image

    def first_and_last(*overrides):
        run_dir, code, events = start(demo_preset, tmp_path / "_".join(overrides), "sampling.prompts=[a red circle]",
                                      "sampling.at_start=true", "sampling.strengths=[1.0]", "sampling.steps=4",
                                      "training.max_steps=8", *overrides)
        assert code == 0, events[-1]
        samples = [e["path"] for e in events if e["kind"] == "sample"]
        return [np.asarray(Image.open(p), dtype=np.int16) for p in (samples[0], samples[-1])]

    base, last = first_and_last("training.ema.enabled=true", "training.ema.decay=1.0")
    assert np.array_equal(base, last)
    base, last = first_and_last("training.ema.enabled=false")
    assert np.abs(base - last).max() > 0
