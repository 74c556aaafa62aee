"""Model families: loading from a folder, a single file and a Hub id; what each family feeds its denoiser."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses

import pytest
import torch

from engine.config.schema import ModelConfig
from engine.failures import UserError
from engine.models.families import capabilities, get_family
from engine.models.tiny import write_single_file
from engine.training.objectives import make_objective


@pytest.fixture(scope="module")
def tiny(tiny_model):  # the session's models: a space and non-ASCII in every path
    return {name: tiny_model(name) for name in ("sd15", "sd2", "sdxl")}


def _load(family, path, **model):
    return get_family(family).load(ModelConfig(family=family, path=str(path), **model), torch.float32, "cpu")


@pytest.mark.parametrize("family,prediction", [("sd15", "epsilon"), ("sd2", "v_prediction"), ("sdxl", "epsilon")])
def test_prediction_type_comes_from_the_scheduler_config(tiny, family, prediction):
    comps = _load(family, tiny[family])
    assert comps.prediction_type == prediction
    assert comps.alphas_cumprod.shape == (1000,)


def test_prediction_type_override_also_reaches_the_sampling_scheduler(tiny):
    comps = _load("sd15", tiny["sd15"], prediction_type="v_prediction")
    assert comps.prediction_type == "v_prediction"
    assert comps.pipe.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_one_training_prediction_has_the_latent_shape_and_gradients_flow(tiny, family):
    fam = get_family(family)
    comps = _load(family, tiny[family])
    cond = fam.encode_text(comps, ["a red circle", "a blue square"])
    latents = fam.encode_image(comps, torch.rand(2, 3, 64, 96) * 2 - 1)
    assert latents.shape == (2, 4, 8, 12)  # VAE scale factor 8, width and height kept apart
    objective = make_objective(comps.prediction_type, comps.alphas_cumprod)
    t = objective.sample_t(2, torch.Generator().manual_seed(0))
    noise = torch.randn_like(latents)
    size_cond = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]] * 2)
    comps.denoiser.requires_grad_(True)
    pred = fam.predict(comps, objective.add_noise(latents, noise, t), t, cond, size_cond)
    assert pred.shape == latents.shape
    torch.nn.functional.mse_loss(pred, objective.target(latents, noise, t)).backward()
    assert comps.denoiser.conv_in.weight.grad.abs().sum() > 0


def test_sdxl_conditions_on_size_and_crop(tiny):
    fam = get_family("sdxl")
    comps = _load("sdxl", tiny["sdxl"])
    cond = fam.encode_text(comps, ["a cat"])
    assert set(cond) == {"prompt_embeds", "pooled"}
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([0.5])
    uncropped = fam.predict(comps, x, t, cond, torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]))
    cropped = fam.predict(comps, x, t, cond, torch.tensor([[128.0, 64.0, 32.0, 0.0, 64.0, 64.0]]))
    assert not torch.allclose(uncropped, cropped)


def test_sd2_is_sd15_with_other_data():
    sd15, sd2 = get_family("sd15"), get_family("sd2")
    differing = {f.name for f in dataclasses.fields(sd15) if getattr(sd15, f.name) != getattr(sd2, f.name)}
    assert differing <= {"name", "caps", "kohya_base_model", "modelspec_architecture", "metadata"}
    caps = {f.name for f in dataclasses.fields(sd15.caps) if getattr(sd15.caps, f.name) != getattr(sd2.caps, f.name)}
    assert caps == {"name", "label", "a_label"}


def test_single_file_checkpoint_loads_with_a_local_config_folder(tiny, tmp_path):
    checkpoint = write_single_file(tiny["sd15"], tmp_path / "my model.safetensors")
    comps = _load("sd15", checkpoint, single_file_config=str(tiny["sd15"]))
    reference = _load("sd15", tiny["sd15"])
    a = dict(comps.denoiser.named_parameters())["conv_in.weight"]
    b = dict(reference.denoiser.named_parameters())["conv_in.weight"]
    assert torch.allclose(a, b)


def test_single_file_without_config_says_what_is_needed(tiny, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"not really")
    with pytest.raises(UserError) as e:
        _load("sd15", checkpoint)
    assert "model.single_file_config" in e.value.message and "model.safetensors" in e.value.message
    assert "model_index.json" in e.value.hint
    incomplete = tmp_path / "configs"
    incomplete.mkdir()
    (incomplete / "model_index.json").write_text((tiny["sd15"] / "model_index.json").read_text(encoding="utf-8"),
                                                 encoding="utf-8")
    with pytest.raises(UserError, match=r"missing .*unet/.*vae/"):
        _load("sd15", checkpoint, single_file_config=str(incomplete))


def test_missing_paths_and_offline_hub_ids_are_explained(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        _load("sd15", tmp_path / "nowhere")
    with pytest.raises(UserError, match="model_index.json"):
        _load("sd15", tmp_path)
    with pytest.raises(UserError) as e:
        _load("sd15", "someone/some-model")
    assert "offline" in e.value.message and "hf download someone/some-model" in e.value.hint
    with pytest.raises(UserError, match="model.path is empty"):
        _load("sd15", "")


def test_unknown_family_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'sdxl'"):
        get_family("sdx")
