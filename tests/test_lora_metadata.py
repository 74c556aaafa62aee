"""The metadata A1111 and sd-scripts read from a LoRA says what was trained: the base model's version and
architecture from the resolved prediction type, when training started, the epoch, and files anyone can read."""
from __future__ import annotations

import os
import stat

import pytest
from safetensors import safe_open

from engine.config.load import load_preset
from engine.demo import prepare
from engine.events import read_all
from engine.models.tiny import build_tiny
from engine.runs import create_run_dir
from engine.training import loop as train

# 16 demo images, batch 4, one repeat: an epoch is 4 steps
FAST = ["sampling.prompts=[]", "output.save_every_n_steps=0", "dataset.repeats=1", "training.batch_size=4",
        "output.formats=[kohya]"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("demo"))


def trained_metadata(demo, tmp_path, *overrides) -> tuple[dict, os.stat_result]:
    run_dir = create_run_dir(load_preset(demo, [*FAST, *overrides]), root=tmp_path / "runs")
    assert train.run(run_dir) == 0, read_all(run_dir / "events.jsonl")[-1]
    lora = run_dir / "demo.safetensors"
    with safe_open(str(lora), "pt") as f:
        return f.metadata(), lora.stat()


@pytest.mark.parametrize("prediction, base, architecture", [
    ("v_prediction", "sd_v2_v", "stable-diffusion-v2-768-v/lora"),   # SD 2.0 / 2.1 (768 px, v)
    ("epsilon", "sd_v2", "stable-diffusion-v2-512/lora"),            # SD 2.0-base / 2.1-base (512 px, epsilon)
])
def test_sd2_says_which_sd2_it_was_trained_on(demo, tmp_path, prediction, base, architecture):
    model = build_tiny("sd2", tmp_path / "tiny sd2")
    meta, _ = trained_metadata(demo, tmp_path, "model.family=sd2", f"model.path={model}",
                               f"model.prediction_type={prediction}", "training.max_steps=1")
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == (base, architecture)
    assert meta["ss_v2"] == "True" and meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.prediction_type"] == ("v" if prediction == "v_prediction" else "epsilon")


def test_sdxl_names_its_implementation_as_sd_scripts_does(demo, tmp_path):
    model = build_tiny("sdxl", tmp_path / "tiny sdxl")
    meta, _ = trained_metadata(demo, tmp_path, "model.family=sdxl", f"model.path={model}", "training.max_steps=1")
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


@pytest.mark.parametrize("steps, epoch", [(4, 1), (2, 1), (6, 2)])  # one whole epoch; half of the first; 1.5
def test_the_epoch_counts_from_one_and_start_and_finish_times_are_there(demo, tmp_path, steps, epoch):
    meta, _ = trained_metadata(demo, tmp_path, f"training.max_steps={steps}")
    assert meta["ss_epoch"] == str(epoch) and meta["ss_steps"] == str(steps)
    assert 0 < float(meta["ss_training_started_at"]) <= float(meta["ss_training_finished_at"])


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_lora_files_are_readable_as_the_users_umask_says(demo, tmp_path):
    old = os.umask(0o022)
    try:
        _, st = trained_metadata(demo, tmp_path, "training.max_steps=1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(st.st_mode) == 0o644  # safetensors alone writes 0600: other accounts could not read it
