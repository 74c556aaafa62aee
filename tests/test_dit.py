"""The small DiT trained from scratch (model.family: dit): training on pixels with no / class conditioning, the
loss falling, samples through the ODE / DDIM samplers, save -> `python -m engine sample`, resume, LoRA refused."""
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config.load import ConfigError, load_preset
from engine.demo import COLOURS, SHAPES, draw_shape
from engine.events import read_all
from engine.runs import PROJECT_ROOT, create_run_dir
from engine.training import loop as train
from support.dit import DIT_PRESET as FLOW
from support.dit import TINY_DIT_RUN
from support.runs import losses, train_run

TINY = [*TINY_DIT_RUN, "training.max_steps=3"]
DDPM = PROJECT_ROOT / "presets" / "dit-ddpm.yaml"
# shapes (tests/conftest.py): the demo's 16 shape pictures, side by side (conditioning none)


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """One sub-folder per shape (conditioning class), four colours each."""
    root = tmp_path_factory.mktemp("dit classes")
    for shape in SHAPES[:2]:
        (root / shape).mkdir()
        for colour, rgb in COLOURS.items():
            draw_shape(shape, rgb).save(root / shape / f"{colour}.png")
    return root


def start(preset, tmp_path, data, *overrides):
    return train_run(preset, tmp_path / "runs", f"dataset.path={data}", *TINY, *overrides)


@pytest.mark.parametrize("conditioning", ["none", "class"])
def test_the_dit_trains_on_an_image_folder(tmp_path, shapes, classes, conditioning):
    data = classes if conditioning == "class" else shapes
    prompts = "[circle, square]" if conditioning == "class" else "[anything]"  # class: the prompts are class names
    run_dir, code, events = start(FLOW, tmp_path, data, f"model.dit.conditioning={conditioning}",
                                  f"sampling.prompts={prompts}", "sampling.steps=2")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    assert len(losses(events)) == 3 and events[-1]["kind"] == "done"
    assert [e["prompt"] for e in events if e["kind"] == "sample"] == prompts.strip("[]").split(", ")
    saved = run_dir / "dit-flow-diffusers"
    settings = __import__("json").loads((saved / "easel_dit.json").read_text())
    assert settings["conditioning"] == conditioning
    assert settings["class_names"] == (["circle", "square"] if conditioning == "class" else [])
    assert (saved / "transformer" / "config.json").is_file()


def test_the_loss_falls_over_30_steps(tmp_path, shapes):
    _, code, events = start(FLOW, tmp_path, shapes, "training.max_steps=30")
    assert code == 0
    values = losses(events)
    assert np.mean(values[-5:]) < 0.7 * np.mean(values[:5]), values


def test_samples_come_through_the_ode_sampler_and_are_not_noise(tmp_path, shapes):
    run_dir, code, events = start(FLOW, tmp_path, shapes, "training.max_steps=30", "sampling.prompts=[one, two]",
                                  "sampling.sampler=midpoint", "sampling.steps=6")
    assert code == 0
    samples = [e for e in events if e["kind"] == "sample"]
    assert [(e["step"], e["strength"]) for e in samples] == [(30, 1.0), (30, 1.0)]
    first = np.asarray(Image.open(samples[0]["path"])).astype(float)
    assert first.shape == (32, 32, 3)
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator("cpu").manual_seed(42))[0]
    noise_px = ((noise.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.abs(first - noise_px).mean() > 20  # the sampler moved it far from the noise it started at
    second = np.asarray(Image.open(samples[1]["path"])).astype(float)
    assert np.abs(first - second).mean() > 1  # seed + i: each prompt its own noise


def test_the_saved_model_renders_again_through_engine_sample(tmp_path, shapes):
    run_dir, code, events = start(FLOW, tmp_path, shapes, "training.max_steps=10", "sampling.prompts=[one]",
                                  "sampling.steps=4")
    assert code == 0
    out = tmp_path / "again"
    done = subprocess.run([sys.executable, "-m", "engine", "sample", str(run_dir), "--out", str(out)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    again = out / "step000010_p00_s1.00.png"
    assert str(again) in done.stdout
    trained = [e["path"] for e in events if e["kind"] == "sample"][-1]
    # the same weights, seed, sampler and steps: the reloaded model draws the very same picture
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(trained)))


def test_ddim_eta_0_sampling_of_the_saved_model_is_deterministic(tmp_path, shapes):
    from engine.training.sample_run import render_run

    run_dir, code, events = start(DDPM, tmp_path, shapes, "training.max_steps=5", "sampling.prompts=[one]")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    a = render_run(run_dir, steps=5, sampler="ddim", eta=0.0, out_dir=tmp_path / "a")
    b = render_run(run_dir, steps=5, sampler="ddim", eta=0.0, out_dir=tmp_path / "b")
    pixels = lambda r: np.asarray(Image.open(r[0]["path"])).astype(int)  # noqa: E731
    assert np.array_equal(pixels(a), pixels(b))
    noisy = render_run(run_dir, steps=5, sampler="ddpm", out_dir=tmp_path / "c")
    assert not np.array_equal(pixels(a), pixels(noisy))  # ancestral sampling adds noise: another picture


def test_a_resumed_dit_run_ends_where_an_uninterrupted_one_does(tmp_path, shapes, monkeypatch):
    from run_control import stop_then_resume

    preset = load_preset(FLOW, [f"dataset.path={shapes}", *TINY, "training.max_steps=6", "model.dit.conditioning=none"])
    straight = create_run_dir(preset, root=tmp_path / "a")
    assert train.run(straight) == 0
    interrupted = create_run_dir(preset, root=tmp_path / "b")
    stop_then_resume(interrupted, monkeypatch, 3)
    by_step = lambda run: {e["step"]: e["loss"] for e in read_all(run / "events.jsonl") if e["kind"] == "step"}  # noqa
    assert by_step(interrupted) == pytest.approx(by_step(straight), rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(straight / "dit-flow-diffusers" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(interrupted / "dit-flow-diffusers" / "transformer" / "diffusion_pytorch_model.safetensors")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_a_sample_prompt_that_is_no_class_is_one_clear_error(tmp_path, classes):
    _, code, events = start(FLOW, tmp_path, classes, "model.dit.conditioning=class", "sampling.prompts=[hexagon]",
                            "sampling.at_start=true")
    assert code == 1
    assert "'hexagon' is not one of this DiT's classes (circle, square)" in events[-1]["message"]


def test_a_lora_on_the_dit_is_refused_naming_network_type(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_preset(FLOW, ["network.type=lora"])
    assert "network.type" in str(err.value) and "full" in str(err.value)


def test_the_dit_trains_on_a_vaes_latents_and_samples_decode_to_pixels(tmp_path, shapes, tiny_model):
    """model.dit.space latent: the tiny SD model's VAE (8x downscale) encodes the images; samples are decoded."""
    model = tiny_model("sd15")
    run_dir, code, events = start(FLOW, tmp_path, shapes, "model.dit.space=latent", f"model.vae_path={model}",
                                  "model.dit.patch_size=2", "training.max_steps=4", "sampling.prompts=[one]",
                                  "sampling.steps=3")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    saved = run_dir / "dit-flow-diffusers"
    config = __import__("json").loads((saved / "transformer" / "config.json").read_text())
    assert config["in_channels"] == 4  # the VAE's latent channels, not RGB
    sample = [e["path"] for e in events if e["kind"] == "sample"][-1]
    assert Image.open(sample).size == (32, 32)


def test_the_dit_demo_preset_validates_and_its_measure_tells_shapes_from_noise(tmp_path):
    from engine.demo import histogram_distance, prepare_dit

    preset = load_preset(prepare_dit(tmp_path / "demo"))
    assert (preset.model.family, preset.network.type, preset.dataset.resolution_px) == ("dit", "full", 32)
    dataset = sorted((tmp_path / "demo" / "dataset").glob("*.png"))
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise)
    assert histogram_distance(dataset[:4], dataset) == 0
    assert histogram_distance([noise], dataset) > 0.8


def test_the_dry_run_plan_counts_the_images_of_class_folders(classes):
    """The plan (dry run, LR plot) reads the dataset as the trainer does: one class per sub-folder."""
    from engine.data.plan import plan_of

    preset = load_preset(FLOW, [f"dataset.path={classes}", *TINY, "model.dit.conditioning=class",
                                "training.max_steps=0", "training.max_epochs=3"])
    plan = plan_of(preset)
    assert plan.images == 8 and plan.steps_per_epoch == 1 and plan.total_steps == 3  # 8 images, batch 8
