"""`python -m engine demo`: tiny model + shapes dataset -> a LoRA that diffusers loads fully and that changes images."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from engine.config.load import load_preset
from engine.demo import cli, make_dataset
from engine.events import read_all

ROOT = Path(__file__).resolve().parents[1]


def test_prepare_only_prints_the_preset_path_last(tmp_path, capsys):
    assert cli(["--prepare-only", str(tmp_path / "my demo")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    preset = load_preset(last)
    assert Path(preset.model.path, "model_index.json").is_file()
    assert len(list(Path(preset.dataset.path).glob("*.png"))) == 16
    assert preset.output.formats == ["kohya"]  # what A1111/Forge/ComfyUI load; diffusers on request


def test_dataset_is_deterministic(tmp_path):
    a = make_dataset(tmp_path / "a")
    b = make_dataset(tmp_path / "b")
    assert [p.read_bytes() for p in sorted(a.iterdir())] == [p.read_bytes() for p in sorted(b.iterdir())]
    assert (a / "red circle.txt").read_text(encoding="utf-8") == "easeldemo, a red circle"


def _render(pipe):
    return pipe("easeldemo, a red circle", num_inference_steps=4, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def _lora_layer_count(module):
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for m in module.modules())


def test_demo_command_trains_a_lora_that_loads_fully_and_changes_the_image(tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "demo ü"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # 2 shared CI cores: no thread fights
    proc = subprocess.run([sys.executable, "-m", "engine", "demo", str(folder), "--set", "training.max_steps=20",
                           "--set", "sampling.every_n_steps=0", "--set", "output.save_every_n_steps=0",
                           "--set", "output.formats=[kohya,diffusers]"],  # both, to compare them
                          cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_dir = next((folder / "runs").iterdir())
    events = read_all(run_dir / "events.jsonl")
    assert events[-1]["kind"] == "done"
    assert len([e for e in events if e["kind"] == "sample"]) == 4  # 2 prompts x 2 strengths at the end
    assert {e["format"] for e in events if e["kind"] == "saved"} == {"kohya", "diffusers"}

    pipe = StableDiffusionPipeline.from_pretrained(folder / "model")
    pipe.set_progress_bar_config(disable=True)
    base = _render(pipe)
    kohya = run_dir / "demo.safetensors"
    with safe_open(str(kohya), "pt") as f:
        modules_in_file = sum(k.endswith(".lora_down.weight") for k in f.keys())
    pipe.load_lora_weights(str(kohya))
    assert _lora_layer_count(pipe.unet) == modules_in_file > 0  # every module in the file found its layer
    with_kohya = _render(pipe)
    assert abs(with_kohya - base).max() > 1e-3

    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(run_dir / "demo.diffusers.safetensors"))
    assert _lora_layer_count(pipe.unet) == modules_in_file
    assert abs(_render(pipe) - with_kohya).max() < 1e-2  # the same LoRA in the other format
