"""`python -m engine validate` and `python -m engine train --dry-run`: exit codes, messages and the plan's arithmetic."""
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.config.load import preset_from_dict
from engine.data.plan import batches_per_epoch, cadence, make_plan, steps_per_epoch

ROOT = Path(__file__).resolve().parents[1]


def engine_cli(*args, env=None, cwd=ROOT):
    import os
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)


def make_dataset(folder: Path, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 10 % 255, 80, 160)).save(folder / f"img {i}.png")
        (folder / f"img {i}.txt").write_text(f"ohwx, picture {i}", encoding="utf-8")
    return folder


def test_validate_all_shipped_presets_exits_0():
    result = engine_cli("validate", *sorted((ROOT / "presets").glob("*.yaml")))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == len(list((ROOT / "presets").glob("*.yaml")))


def test_validate_bad_preset_exits_2_with_one_message_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  family: sdx\ntraining:\n  batch_size: -1\ntrainng:\n  max_steps: 10\n", "utf-8")
    result = engine_cli("validate", bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    for words in ("did you mean 'sdxl'", "training.batch_size: -1", "did you mean 'training'"):
        assert words in result.stderr


def test_train_with_a_bad_preset_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {batch_size: 0}\n", "utf-8")
    result = engine_cli("train", bad, "--dry-run")
    assert result.returncode == 2 and "training.batch_size" in result.stderr and "Traceback" not in result.stderr


def test_unknown_command_suggests_the_closest():
    result = engine_cli("valdate")
    assert result.returncode == 2 and "did you mean 'validate'" in result.stderr


def test_dry_run_prints_preset_and_plan_without_loading_torch(tmp_path):
    data = make_dataset(tmp_path / "my set é", [(64, 64)] * 5)
    code = ("import sys; from engine.cli import train; rc = train(['presets/demo.yaml', '--dry-run']); "
            "assert 'torch' not in sys.modules, 'dry run imported torch'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, encoding="utf-8",
                            env={**__import__("os").environ, "DATA_DIR": str(data), "MAX_STEPS": "0"}
                            | {"PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 2 and "max_epochs" in result.stderr  # MAX_STEPS=0 and no epochs: a config error
    result = engine_cli("train", "presets/demo.yaml", "--dry-run", "--set", "training.max_steps=0",
                        "--set", "training.max_epochs=3", "--set", "output.save_every_n_epochs=1",
                        env={"DATA_DIR": str(data)})
    assert result.returncode == 0, result.stderr
    assert "# resolved preset" in result.stdout and "trigger: easeldemo" in result.stdout
    # 5 images x 2 repeats = 10 samples, batch 4 -> 3 batches per epoch, 3 epochs -> 9 steps
    assert "batches per epoch: 3; optimizer steps per epoch: 3" in result.stdout
    assert "total steps: 9 (= 3.0 epochs)" in result.stdout
    assert "checkpoints at steps: 3, 6; the final LoRA is always saved" in result.stdout


def test_dry_run_with_a_missing_dataset_says_which_path(tmp_path):
    result = engine_cli("train", "presets/demo.yaml", "--dry-run", env={"DATA_DIR": str(tmp_path / "nope")})
    assert result.returncode == 2 and "dataset folder not found" in result.stdout and "nope" in result.stdout


def test_dry_run_by_environment_variable(tmp_path):
    data = make_dataset(tmp_path / "d", [(64, 64)] * 2)
    result = engine_cli("train", "presets/demo.yaml", env={"DRY_RUN": "1", "DATA_DIR": str(data)})
    assert result.returncode == 0 and "# plan (dry run" in result.stdout


def test_plan_arithmetic_with_buckets_repeats_accumulation_and_regularization(tmp_path):
    data = make_dataset(tmp_path / "data", [(512, 512)] * 5 + [(768, 512)] * 3 + [(512, 768)] * 1)
    reg = make_dataset(tmp_path / "reg", [(512, 512)] * 4)
    p = preset_from_dict({"dataset": {"path": str(data), "repeats": 3, "resolution_px": 512, "use_reg": True,
                                      "reg_path": str(reg), "reg_repeats": 1},
                          "training": {"batch_size": 2, "grad_accum": 2, "max_steps": 0, "max_epochs": 4},
                          "sampling": {"prompts": ["x"], "every_n_steps": 5},
                          "output": {"save_every_n_steps": 4, "save_every_n_epochs": 2}})
    plan = make_plan(p.dataset, p.training, p.sampling, p.output)
    assert (plan.images, plan.reg_images) == (9, 4)
    counts = plan.bucket_counts
    assert counts["512x512"] == 5 * 3 + 4 and sum(counts.values()) == 9 * 3 + 4 == plan.samples_per_epoch
    # square 19 -> 10 batches, wide 9 -> 5, tall 3 -> 2: 17 batches, 9 optimizer steps per epoch, 4 epochs
    assert plan.batches_per_epoch == 17 and plan.steps_per_epoch == 9 and plan.total_steps == 36
    assert plan.checkpoint_steps == [4, 8, 12, 16, 18, 20, 24, 28, 32]  # step 36 writes the final LoRA
    assert plan.sample_steps == [5, 10, 15, 20, 25, 30, 35, 36]


@pytest.mark.parametrize("counts, batch, expected", [({(64, 64): 10}, 4, 3), ({(64, 64): 4, (128, 64): 1}, 4, 2),
                                                     ({}, 2, 0), ({(64, 64): 0}, 1, 0)])
def test_batches_per_epoch(counts, batch, expected):
    assert batches_per_epoch(counts, batch) == expected


def test_steps_per_epoch_and_cadence():
    assert steps_per_epoch(17, 2) == 9 and steps_per_epoch(16, 2) == 8
    assert cadence(0, 100) == [] and cadence(40, 120) == [40, 80, 120]


def test_resume_refuses_overrides_it_would_ignore(tmp_path):
    result = engine_cli("train", "--resume", tmp_path, "--set", "training.max_steps=999", "--dry-run")
    assert result.returncode == 2 and "do not also give a preset or --set" in result.stderr
    result = engine_cli("train", "presets/demo.yaml", env={"RESUME_FROM": str(tmp_path), "DRY_RUN": "1"})
    assert result.returncode == 2 and "do not also give a preset" in result.stderr
