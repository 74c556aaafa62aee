"""The metadata A1111 and sd-scripts read from a LoRA says what was trained: the base model's version and
architecture from the resolved prediction type, when training started, the epoch, and files anyone can read."""
from __future__ import annotations

import os
import stat

import pytest
from safetensors import safe_open

from support.runs import train_run

# 16 demo images, batch 4, one repeat: an epoch is 4 steps
FAST = ["sampling.prompts=[]", "output.save_every_n_steps=0", "dataset.repeats=1", "training.batch_size=4",
        "output.formats=[kohya]"]


def trained_metadata(demo_preset, tmp_path, *overrides) -> tuple[dict, os.stat_result]:
    run_dir, code, events = train_run(demo_preset, tmp_path / "runs", *FAST, *overrides)
    assert code == 0, events[-1]
    lora = run_dir / "demo.safetensors"
    with safe_open(str(lora), "pt") as f:
        return f.metadata(), lora.stat()


@pytest.mark.parametrize("prediction, base, architecture", [
    ("v_prediction", "sd_v2_v", "stable-diffusion-v2-768-v/lora"),   # SD 2.0 / 2.1 (768 px, v)
    ("epsilon", "sd_v2", "stable-diffusion-v2-512/lora"),            # SD 2.0-base / 2.1-base (512 px, epsilon)
])
def test_sd2_says_which_sd2_it_was_trained_on(demo_preset, tmp_path, tiny_model, prediction, base, architecture):
    model = tiny_model("sd2")
    meta, _ = trained_metadata(demo_preset, tmp_path, "model.family=sd2", f"model.path={model}",
                               f"model.prediction_type={prediction}", "training.max_steps=1")
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == (base, architecture)
    assert meta["ss_v2"] == "True" and meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.prediction_type"] == ("v" if prediction == "v_prediction" else "epsilon")


def test_sdxl_names_its_implementation_as_sd_scripts_does(demo_preset, tmp_path, tiny_model):
    model = tiny_model("sdxl")
    meta, _ = trained_metadata(demo_preset, tmp_path, "model.family=sdxl", f"model.path={model}",
                               "training.max_steps=1")
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


@pytest.mark.parametrize("steps, epoch", [(4, 1), (2, 1), (6, 2)])  # one whole epoch; half of the first; 1.5
def test_the_epoch_counts_from_one_and_start_and_finish_times_are_there(demo_preset, tmp_path, steps, epoch):
    meta, _ = trained_metadata(demo_preset, tmp_path, f"training.max_steps={steps}")
    assert meta["ss_epoch"] == str(epoch) and meta["ss_steps"] == str(steps)
    assert 0 < float(meta["ss_training_started_at"]) <= float(meta["ss_training_finished_at"])


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_lora_files_are_readable_as_the_users_umask_says(demo_preset, tmp_path):
    old = os.umask(0o022)
    try:
        _, st = trained_metadata(demo_preset, tmp_path, "training.max_steps=1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(st.st_mode) == 0o644  # safetensors alone writes 0600: other accounts could not read it
