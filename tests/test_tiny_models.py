"""The tiny model folders load through the same from_pretrained path a user's real model takes."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import re

import pytest
import torch

from engine.models.tiny import FAMILIES, build_tiny

EXPECTED = {  # family -> (pipeline class, scheduler prediction type or None for flow matching)
    "sd15": ("StableDiffusionPipeline", "epsilon"),
    "sd2": ("StableDiffusionPipeline", "v_prediction"),
    "sdxl": ("StableDiffusionXLPipeline", "epsilon"),
    "flux": ("FluxPipeline", None),
    "flux2": ("Flux2KleinPipeline", None),
    "zimage": ("ZImagePipeline", None),
    "chroma": ("ChromaPipeline", None),
}


@pytest.fixture(scope="module")
def tiny_dirs(tiny_model):
    return {family: tiny_model(family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_and_renders_64px(tiny_dirs, family):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_dirs[family])
    pipe.set_progress_bar_config(disable=True)
    class_name, prediction_type = EXPECTED[family]
    assert type(pipe).__name__ == class_name
    assert pipe.scheduler.config.get("prediction_type") == prediction_type
    extra = {"max_sequence_length": 32} if family == "flux" else {}
    image = pipe(prompt="the cat", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0), **extra).images[0]
    assert image.shape == (64, 64, 3)
    assert image.std() > 0.01  # a real (if random) picture, not a constant


def test_tokenizer_round_trips_and_knows_common_words(tiny_dirs):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_dirs["sd15"] / "tokenizer")
    ids = tok("the cat").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == 4  # "the" and "cat" are single tokens thanks to the merges


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    weights = "unet/diffusion_pytorch_model.safetensors"
    a = (build_tiny("sd15", tmp_path / "a", seed=0) / weights).read_bytes()
    b = (build_tiny("sd15", tmp_path / "b", seed=0) / weights).read_bytes()
    c = (build_tiny("sd15", tmp_path / "c", seed=1) / weights).read_bytes()
    assert a == b
    assert a != c


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny("sd15", tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_unknown_family_error_suggests_the_closest(tmp_path):
    with pytest.raises(ValueError, match=r"'sdx' is not one of .*did you mean 'sdxl'"):
        build_tiny("sdx", tmp_path / "x")


def test_folder_is_a_few_megabytes(tiny_dirs):
    total = sum(f.stat().st_size for f in tiny_dirs["sdxl"].rglob("*") if f.is_file())
    assert total < 20e6
    assert json.loads((tiny_dirs["sdxl"] / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_single_file_loads_bit_identical_to_the_folder(tiny_dirs, family, tmp_path):
    """A user's downloaded .safetensors checkpoint loads offline with config=<local folder>, same weights."""
    from diffusers import DiffusionPipeline
    from safetensors import safe_open

    from engine.models.tiny import write_single_file

    checkpoint = write_single_file(tiny_dirs[family], tmp_path / f"{family}.safetensors")
    with safe_open(str(checkpoint), "pt") as f:
        keys = list(f.keys())
    assert any(re.match(r"model\.diffusion_model\.input_blocks\.\d+\.1\.transformer_blocks\.", k) for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)  # LDM names throughout
    assert not any("down_blocks" in k for k in keys)

    folder = DiffusionPipeline.from_pretrained(tiny_dirs[family])
    single = type(folder).from_single_file(str(checkpoint), config=str(tiny_dirs[family]), local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name not in folder.components:
            continue
        expected, loaded = folder.components[name].state_dict(), single.components[name].state_dict()
        assert expected.keys() == loaded.keys(), name
        different = [k for k in expected if not torch.equal(expected[k], loaded[k])]
        assert not different, f"{name}: {different[:3]}"
    assert single.scheduler.config.prediction_type == folder.scheduler.config.prediction_type
    render = dict(prompt="the cat", num_inference_steps=2, height=64, width=64, output_type="np")
    a = folder(generator=torch.Generator().manual_seed(0), **render).images
    b = single(generator=torch.Generator().manual_seed(0), **render).images
    assert (a == b).all()
