"""training.mode vae (FluxFlow's --train_vae / --gan_training): the KL warm-up and free bits against closed forms,
the VAE learning on CPU with and without the discriminator, decoder-only training, its reconstructions, its files
loading back (a diffusers folder, a single-file VAE in the layout A1111 and ComfyUI load), and an exact resume."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.config.load import ConfigError, load_preset
from engine.events import read_all
from engine.runs import PROJECT_ROOT, create_run_dir
from engine.training import loop as train
from engine.training.modes.vae import kl_per_value, kl_term, kl_weight
from run_control import stop_then_resume
from support.runs import errors, train_run

QUICK = ["training.mode=vae", "optimizers.vae.lr=1e-3", "optimizers.discriminator.lr=1e-3",
         "schedules.vae.type=constant", "schedules.discriminator.type=constant", "output.save_every_n_steps=0",
         "sampling.every_n_steps=0", "vae.kl_warmup_steps=10", "dataset.repeats=1"]


def start(demo_preset, tmp_path, *overrides):
    return train_run(demo_preset, tmp_path / "runs", *QUICK, *overrides)


# --------------------------------------------------------------------------------------------------- the math

def test_the_kl_weight_warms_up_linearly_to_beta():
    assert kl_weight(0, 1e-4, 5000) == 0.0
    assert kl_weight(2500, 1e-4, 5000) == pytest.approx(5e-5)
    assert kl_weight(5000, 1e-4, 5000) == kl_weight(9000, 1e-4, 5000) == pytest.approx(1e-4)
    assert kl_weight(0, 1e-4, 0) == 1e-4  # no warm-up


def test_the_kl_and_free_bits_equal_their_closed_forms():
    zeros = torch.zeros(2, 4, 3, 3)
    assert torch.allclose(kl_per_value(zeros, zeros), torch.zeros(2))  # the posterior is the prior
    mean, logvar = torch.ones(2, 4, 3, 3), torch.full((2, 4, 3, 3), np.log(2.0))
    # 0.5 (m^2 + s^2 - 1 - ln s^2) = 0.5 (1 + 2 - 1 - ln 2)
    assert torch.allclose(kl_per_value(mean, logvar), torch.full((2,), 0.5 * (2 - np.log(2.0))))
    small = torch.full((1, 4, 3, 3), 0.1, requires_grad=True)
    kl_small = kl_per_value(small, torch.zeros(1, 4, 3, 3)).item()  # 0.005 nats per value
    penalised = kl_term(small, torch.zeros(1, 4, 3, 3), free_bits=0.5)
    assert penalised.item() == pytest.approx(0.5) and kl_small < 0.5
    penalised.backward()
    assert torch.count_nonzero(small.grad) == 0  # below the allowance: no pull towards the prior


def test_the_discriminators_hinge_losses():
    from engine.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss

    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    logits = PatchDiscriminator()(torch.zeros(2, 3, 64, 64))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch


# --------------------------------------------------------------------------------------------------- runs

def test_the_vae_learns_and_its_files_load_where_users_load_them(demo_preset, tmp_path):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    run_dir, code, events = start(demo_preset, tmp_path, "training.max_steps=30", "validation.fraction=0.25",
                                  "validation.every_n_steps=10", "sampling.every_n_steps=30")
    assert code == 0, errors(events)
    vals = [e["val_loss"] for e in events if e["kind"] == "val"]
    assert len(vals) >= 3 and vals[-1] < 0.8 * vals[0], vals  # the reconstructions get better
    steps = [e for e in events if e["kind"] == "step"]
    assert set(steps[-1]["lr"]) == {"vae"} and {"rec_loss", "kl"} <= set(steps[-1])
    samples = [e["path"] for e in events if e["kind"] == "sample"]
    width, height = Image.open(samples[0]).size
    assert width == 2 * height  # the original beside its reconstruction

    folder, single = run_dir / "demo-vae", run_dir / "demo.safetensors"
    keys = set(load_file(str(single)))
    assert "encoder.down.0.block.0.conv1.weight" in keys and "decoder.up.0.block.0.conv1.weight" in keys
    assert not any(k.startswith(("first_stage_model.", "vae.")) for k in keys)  # A1111 models/VAE, ComfyUI vae/
    model = load_preset(demo_preset).model.path
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None,
                                                   vae=AutoencoderKL.from_single_file(str(single), config=str(folder)))
    original = AutoencoderKL.from_pretrained(model, subfolder="vae")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = pipe.vae.decode(z).sample
        assert torch.allclose(trained, AutoencoderKL.from_pretrained(folder).decode(z).sample, atol=1e-5)
        assert not torch.allclose(trained, original.decode(z).sample, atol=1e-3)  # it is the trained VAE


def test_decoder_only_training_leaves_the_encoder_as_it_was(demo_preset, tmp_path):
    from diffusers import AutoencoderKL

    run_dir, code, events = start(demo_preset, tmp_path, "training.max_steps=3", "vae.part=decoder")
    assert code == 0, errors(events)
    model = load_preset(demo_preset).model.path
    before = AutoencoderKL.from_pretrained(model, subfolder="vae").state_dict()
    after = AutoencoderKL.from_pretrained(run_dir / "demo-vae").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_with_the_discriminator_it_trains_and_resumes_exactly(demo_preset, tmp_path, monkeypatch):
    """Two optimizers (vae, discriminator), the critic's BatchNorm and the reparameterisation noise: a run stopped
    at step 2 and resumed ends with the weights of an uninterrupted one."""
    gan = ["vae.gan=true", "training.max_steps=4", "vae.lambda_adv=0.5"]
    straight, code, events = start(demo_preset, tmp_path / "a", *gan)
    assert code == 0, errors(events)
    step = [e for e in events if e["kind"] == "step"][-1]
    assert set(step["lr"]) == {"vae", "discriminator"} and {"adv_loss", "d_loss"} <= set(step)

    resumed = create_run_dir(load_preset(demo_preset, [*QUICK, *gan]), root=tmp_path / "b" / "runs")
    stop_then_resume(resumed, monkeypatch, 2)
    a, b = load_file(str(straight / "demo.safetensors")), load_file(str(resumed / "demo.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vae_mode_needs_a_vae_and_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_preset(PROJECT_ROOT / "presets" / "dit-flow-matching.yaml", ["training.mode=vae"])
    assert [key for key, _ in e.value.problems] == ["training.mode"]


def test_fluxflows_component_names_load_as_easels():
    """FluxFlow's `flow` (and diffusers' `transformer`) is the denoiser's component, unet; both at once is an error."""
    preset = load_preset(PROJECT_ROOT / "presets" / "demo.yaml",
                         ["optimizers={flow: {type: lion, lr: 5.0e-7}, vae: {type: adamw, lr: 1.0e-5}}"])
    assert preset.optimizers["unet"].type == "lion" and preset.optimizers["unet"].lr == 5e-7
    assert preset.optimizers["vae"].lr == 1e-5
    with pytest.raises(ConfigError) as e:
        load_preset(PROJECT_ROOT / "presets" / "demo.yaml", ["optimizers={flow: {lr: 1.0}, unet: {lr: 2.0}}"])
    assert "optimizers.flow" in [key for key, _ in e.value.problems]


def test_a_flux_vae_trains_and_its_file_loads_as_flux_ae(demo_preset, tmp_path, tiny_model):
    """FLUX's 16-channel VAE (no quant_conv): the single file is in ae.safetensors' layout, and the FLUX family
    takes it as model.vae_path."""
    from engine.models.families import get_family

    model = tiny_model("flux")
    dataset = load_preset(demo_preset).dataset.path  # the demo's shapes
    preset = load_preset(PROJECT_ROOT / "presets" / "flux-lora-24gb.yaml",
                         [f"model.path={model}", f"dataset.path={dataset}", *QUICK, "training.max_steps=2",
                          "dataset.resolution_px=64", "dataset.min_bucket_px=64", "dataset.max_bucket_px=128",
                          "training.precision=fp32", "model.quantize_base=none", "model.block_swap=0"])
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert train.run(run_dir) == 0, errors(read_all(run_dir / "events.jsonl"))
    ae = run_dir / f"{preset.output.run_name}.safetensors"
    assert "decoder.up.0.block.0.conv1.weight" in load_file(str(ae)) and "quant_conv.weight" not in load_file(str(ae))
    flux = load_preset(PROJECT_ROOT / "presets" / "flux-lora-24gb.yaml", [f"model.path={model}",
                                                                           f"model.vae_path={ae}"])
    comps = get_family("flux").load(flux.model, torch.float32, "cpu")
    trained = load_file(str(run_dir / f"{preset.output.run_name}-vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(comps.vae.state_dict()[k], trained[k]) for k in trained)


def test_a_missing_test_image_is_named_before_training(demo_preset, tmp_path):
    run_dir, code, events = start(demo_preset, tmp_path, "training.max_steps=2",
                                  f"vae.test_images=[{tmp_path / 'gone.png'}]")
    assert code != 0 and not [e for e in events if e["kind"] == "step"]
    assert "vae.test_images: no such image" in events[-1]["message"] and "gone.png" in events[-1]["message"]
