"""Sample grids: each prompt at each LoRA strength, PNGs a user can inspect in A1111's PNG Info."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.models.lora import add_lora, lora_layers
from engine.sampling.render import a1111_parameters, sample_images
from engine.sampling.samplers import SAMPLERS, set_sampler


def _pipeline_with_lora(folder, denoiser_targets):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    denoiser = pipe.components.get("unet") or pipe.components["transformer"]
    add_lora(denoiser, rank=4, alpha=4, dropout=0.1, target_modules=denoiser_targets)
    with torch.no_grad():  # lora_B starts at zero: randomise it so the adapter visibly changes the image
        g = torch.Generator().manual_seed(0)
        for layer in lora_layers(denoiser).values():
            layer.lora_B["default"].weight.normal_(0, 0.5, generator=g)
    denoiser.train()  # as mid-training: sampling must not leave it in eval mode
    return pipe, denoiser


@pytest.fixture(scope="module")
def sd15(tiny_model):
    return _pipeline_with_lora(tiny_model("sd15"), ["to_q", "to_k", "to_v", "to_out.0"])


def test_strength_sweep_writes_pngs_with_a1111_metadata(sd15, tmp_path):
    pipe, denoiser = sd15
    trainable_before = [p.requires_grad for p in denoiser.parameters()]
    torch.manual_seed(7)
    rng_expected = torch.rand(2)
    torch.manual_seed(7)

    results = sample_images(pipe, ["the cat", "a dog, sitting"], negative_prompt="blurry", seed=42, steps=2,
                            guidance=5.0, width=64, height=64, strengths=[0.0, 1.0], out_dir=tmp_path, step=120,
                            extra_info={"Model": "tiny-sd15", "LoRA": "my_lora"})

    assert [(r["prompt"], r["strength"], r["step"]) for r in results] == [
        ("the cat", 0.0, 120), ("the cat", 1.0, 120), ("a dog, sitting", 0.0, 120), ("a dog, sitting", 1.0, 120)]
    assert [os.path.basename(r["path"]) for r in results] == [
        "step000120_p00_s0.00.png", "step000120_p00_s1.00.png", "step000120_p01_s0.00.png", "step000120_p01_s1.00.png"]
    image = Image.open(results[3]["path"])
    assert image.size == (64, 64)
    assert image.text["parameters"] == (
        'a dog, sitting\nNegative prompt: blurry\nSteps: 2, Sampler: DDPMScheduler, CFG scale: 5, Seed: 43, '
        'Size: 64x64, LoRA strength: 1, Training step: 120, Model: tiny-sd15, LoRA: my_lora')
    assert json.loads(image.text["easel"])["Seed"] == 43

    base, with_lora = (np.asarray(Image.open(r["path"]), dtype=float) for r in results[:2])
    assert np.abs(base - with_lora).max() > 10  # strength 0 is the base model; 1 shows the LoRA

    # the training state is untouched: RNG stream, train mode, trainable params, LoRA scales
    assert torch.equal(torch.rand(2), rng_expected)
    assert denoiser.training
    assert [p.requires_grad for p in denoiser.parameters()] == trainable_before
    assert all(layer.scaling["default"] == 1.0 for layer in lora_layers(denoiser).values())
    assert not list(tmp_path.glob("*.tmp"))


def test_strength_zero_matches_the_model_without_lora(sd15, tmp_path):
    pipe, denoiser = sd15
    [zero] = sample_images(pipe, ["the cat"], "", 1, 2, 5.0, 64, 64, [0.0], tmp_path / "a", 0)
    denoiser.disable_adapters()
    try:
        [plain] = sample_images(pipe, ["the cat"], "", 1, 2, 5.0, 64, 64, [1.0], tmp_path / "b", 0)
    finally:
        denoiser.enable_adapters()
    assert np.array_equal(np.asarray(Image.open(zero["path"])), np.asarray(Image.open(plain["path"])))


def test_half_strength_lies_between(sd15, tmp_path):
    pipe, _ = sd15
    images = [np.asarray(Image.open(r["path"]), dtype=float)
              for r in sample_images(pipe, ["the cat"], "", 3, 2, 5.0, 64, 64, [0.0, 0.5, 1.0], tmp_path, 0)]
    assert 0 < np.abs(images[1] - images[0]).mean() < np.abs(images[2] - images[0]).mean()


def test_flux_samples_at_multiples_of_16(tiny_model, tmp_path):
    pipe, _ = _pipeline_with_lora(tiny_model("flux"), ["to_q", "to_k", "to_v", "to_out.0"])
    results = sample_images(pipe, ["the cat"], "ignored by flux", 0, 2, 3.5, 48, 32, [0.0, 1.0], tmp_path, 5,
                            sampler="flow_euler", max_sequence_length=16)
    assert [Image.open(r["path"]).size for r in results] == [(48, 32), (48, 32)]
    assert "Sampler: Euler" in Image.open(results[0]["path"]).text["parameters"]


def test_sampler_registry_and_errors(sd15):
    pipe, _ = sd15
    original = pipe.scheduler
    try:
        for name in ("euler", "euler_a", "ddim", "dpmpp_2m"):
            set_sampler(pipe, name)
            assert type(pipe.scheduler).__name__ == SAMPLERS[name]
            assert pipe.scheduler.config.beta_schedule == "scaled_linear"  # the model's schedule carried over
        with pytest.raises(ValueError, match=r"sample.sampler: 'eulr' is not one of .*did you mean 'euler'"):
            set_sampler(pipe, "eulr")
    finally:
        pipe.scheduler = original


def test_a1111_text_quotes_values_with_commas():
    text = a1111_parameters("p", "", {"Steps": 20, "Model": "a, b", "CFG scale": 7.5})
    assert text == 'p\nSteps: 20, Model: "a, b", CFG scale: 7.5'
