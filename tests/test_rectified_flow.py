"""Rectified flow on a v-prediction SD2 (EveryDream2's --rectified_flow): the check reads the model's own prediction
type, the samples and the saved model use flow Euler, the files say flow, and a note says how to sample them."""
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from engine.config.load import ConfigError, load_preset
from engine.runs import PROJECT_ROOT
from support.runs import train_run

PRESET = PROJECT_ROOT / "presets" / "demo.yaml"


@pytest.fixture(scope="module")
def sd2(tiny_model, shapes):
    return {"model": tiny_model("sd2"), "data": shapes}


def start(sd2, tmp_path, model=None, *overrides):
    settings = ["model.family=sd2", f"model.path={model or sd2['model']}", f"dataset.path={sd2['data']}",
                "training.objective=flow", "training.max_steps=3", "sampling.prompts=[easeldemo, a red circle]",
                "sampling.steps=3", "sampling.strengths=[1.0]", "output.save_every_n_steps=0", *overrides]
    return train_run(PRESET, tmp_path / "runs", *settings)


def test_a_full_rectified_flow_model_samples_and_saves_as_a_flow(sd2, tmp_path):
    from engine.models.families import get_family

    run_dir, code, events = start(sd2, tmp_path, None, "network.type=full", "optimizers.unet.lr=1e-5")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    assert any(e["kind"] == "status" and "Rectified flow" in e["text"] for e in events)
    sample = next(e["path"] for e in events if e["kind"] == "sample")
    assert "FlowMatchEulerDiscreteScheduler" in Image.open(sample).info["parameters"]  # sampled as it trained
    folder = run_dir / "demo-diffusers"
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler" and config["shift"] == 1.0
    assert "ModelSamplingSD3" in (run_dir / "demo.how-to-sample.txt").read_text(encoding="utf-8")

    # the saved folder loads back as a flow model, and its pipeline samples
    preset = load_preset(PRESET, ["model.family=sd2", f"model.path={folder}"])
    comps = get_family("sd2").load(preset.model, torch.float32, "cpu")
    assert comps.prediction_type == "flow"
    image = comps.pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_a_rectified_flow_lora_says_flow_in_its_header(sd2, tmp_path):
    run_dir, code, events = start(sd2, tmp_path, None, "sampling.prompts=[]")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    with safe_open(str(run_dir / "demo.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.prediction_type"] == "flow" and meta["ss_base_model_version"] == "sd_v2_v"
    assert (run_dir / "demo.how-to-sample.txt").is_file()


def test_an_epsilon_sd2_is_refused_saying_why(sd2, tmp_path):
    """The check reads the model's scheduler config, not its family name: an epsilon SD2 (512-base) is refused."""
    epsilon = shutil.copytree(sd2["model"], tmp_path / "sd2 512-base")
    path = epsilon / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**config, "prediction_type": "epsilon"}), encoding="utf-8")
    _, code, events = start(sd2, tmp_path, epsilon)
    assert code != 0
    error = events[-1]
    assert error["kind"] == "error" and "needs a v-prediction base model" in error["message"]
    assert "predicts epsilon" in error["message"] and "objective: auto" in error["hint"]


def test_the_preset_check_refuses_flow_with_epsilon_or_another_sampler(sd2):
    with pytest.raises(ConfigError) as e:
        load_preset(PRESET, ["model.family=sd2", "training.objective=flow", "model.prediction_type=epsilon",
                             "sampling.sampler=euler"])
    keys = [key for key, _ in e.value.problems]
    assert "training.objective" in keys and "sampling.sampler" in keys


def test_a_rectified_flow_sd2_reflows_with_its_captions(sd2, tmp_path):
    """EveryDream2's --rectified_flow --reflow_steps 1: the pairs carry the captions' text embeddings."""
    run_dir, code, events = start(sd2, tmp_path, None, "sampling.prompts=[]", "training.reflow_steps=1",
                                  "training.reflow_gen_batches=1", "training.reflow_sample_steps=3")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    assert [e["iteration"] for e in events if e["kind"] == "reflow"] == [0, 1]
    pair = torch.load(next((run_dir / "reflow" / "iter00").glob("pair*.pt")), weights_only=True)
    assert "prompt_embeds" in pair["cond"] and pair["x0"].shape[0] == 4  # SD latents
