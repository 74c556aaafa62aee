"""Bad input and broken environments get a message in the user's words: which file, key or variable, and what
to do. Each of these used to end in an internal exception or, worse, in a run that silently did the wrong thing."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from engine import cli
from engine.captions.captioning import caption_dataset
from engine.config.load import ConfigError, load_preset
from run_control import stop_at
from engine.events import read_all
from engine.runs import create_run_dir
from engine.training import loop as train
from support.runs import train_run

QUICK = ["sampling.prompts=[]", "training.max_steps=2", "output.save_every_n_steps=0", "output.formats=[kohya]"]


def run_error(demo_preset, tmp_path, *overrides) -> dict:
    _, code, events = train_run(demo_preset, tmp_path / "runs", *QUICK, *overrides)
    assert code != 0
    event = events[-1]
    assert event["kind"] == "error"
    assert "Traceback" not in event["message"] and "Error:" not in event["message"], event["message"]
    return event


# ------------------------------------------------------------------------------------------------ the preset
def test_an_empty_preset_is_refused_not_trained_with_defaults(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here yet\n", encoding="utf-8")
    assert cli.validate([str(empty)]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err and "presets/" in err


def test_a_learning_rate_of_zero_is_said_out_loud(demo_preset, tmp_path):
    run_dir = create_run_dir(load_preset(demo_preset, [*QUICK, "optimizers.unet.lr=0"]), root=tmp_path / "runs")
    assert train.run(run_dir) == 0  # legal: it re-saves a LoRA unchanged (network.init_from); rarely meant
    warnings = [e["message"] for e in read_all(run_dir / "events.jsonl") if e["kind"] == "warning"]
    assert any("optimizers.unet.lr: the learning rate is 0, so this run will not change the unet" in w for w in warnings), warnings


def test_a_bad_value_from_an_environment_variable_names_the_variable(demo_preset):
    with pytest.raises(ConfigError) as e:
        load_preset(demo_preset, env={"MAX_STEPS": "abc"})
    assert "training.max_steps" in str(e.value) and "MAX_STEPS=abc" in str(e.value)
    with pytest.raises(ConfigError) as e:  # the same key from --set: that is what the user typed
        load_preset(demo_preset, ["training.max_steps=abc"], env={"MAX_STEPS": "5"})
    assert "MAX_STEPS" not in str(e.value)


# ------------------------------------------------------------------------------------------------ the files
def test_dataset_path_pointing_at_a_file(demo_preset, tmp_path):
    image = next(Path(load_preset(demo_preset).dataset.path).glob("*.png"))
    event = run_error(demo_preset, tmp_path, f"dataset.path={image}")
    assert "is a file, not a folder" in event["message"] and str(image.parent) in event["hint"]


def test_captioning_a_folder_that_does_not_exist(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        caption_dataset(tmp_path / "no such folder", model="blip")


def test_a_model_folder_without_its_unet(demo_preset, tmp_path):
    model = shutil.copytree(load_preset(demo_preset).model.path, tmp_path / "model")
    shutil.rmtree(model / "unet")
    event = run_error(demo_preset, tmp_path, f"model.path={model}")
    assert "incomplete" in event["message"] and "unet/" in event["message"]
    assert "download the model" in event["hint"]


def test_damaged_weights_are_named(demo_preset, tmp_path):
    model = shutil.copytree(load_preset(demo_preset).model.path, tmp_path / "model")
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    event = run_error(demo_preset, tmp_path, f"model.path={model}")
    assert weights.name in event["message"] and "not a valid weights file" in event["message"]
    assert "unet/" in event["hint"]


def test_the_wrong_family_for_the_model_is_named_from_its_config(demo_preset, tmp_path, tiny_model):
    sdxl = tiny_model("sdxl")
    event = run_error(demo_preset, tmp_path, f"model.path={sdxl}")  # the demo preset says sd15
    assert "is an SDXL model, but model.family is sd15" in event["message"]
    assert "model.family: sdxl" in event["hint"]
    started = [e for e in read_all(next((tmp_path / "runs").iterdir()) / "events.jsonl") if e["kind"] == "status"]
    assert not any("Model loaded" in e["text"] for e in started), "decided before loading the model"


def test_a_changed_rank_on_resume_says_what_to_do(demo_preset, tmp_path, monkeypatch):
    from engine.config.load import preset_from_dict
    from engine.config.save import preset_to_dict, save_preset

    run_dir = create_run_dir(load_preset(demo_preset, [*QUICK, "network.rank=8", "training.max_steps=4",
                                                "output.save_every_n_steps=2"]), root=tmp_path / "runs")
    real = train.report_step
    stop_at(monkeypatch, 2)
    assert train.run(run_dir) == 0
    monkeypatch.setattr(train, "report_step", real)
    data = preset_to_dict(load_preset(run_dir / "preset.yaml"))
    data["network"]["rank"] = 16
    save_preset(preset_from_dict(data), run_dir / "preset.yaml")
    assert train.run(run_dir, resume=True) == 1
    error = read_all(run_dir / "events.jsonl")[-1]
    assert "trained with rank 8" in error["message"] and "now says 16" in error["message"]
    assert "network.init_from" in error["hint"] and ".safetensors" in error["hint"]


# ------------------------------------------------------------------------------------------------ the disk
def test_a_read_only_output_folder(demo_preset, tmp_path, monkeypatch, capsys):
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):  # as root, chmod cannot make a folder read-only: refuse like an OS would
        if tmp_path / "locked" in (self, *self.parents):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", refuse)
    assert cli.train([str(demo_preset), "--runs-root", str(tmp_path / "locked"),
                      *sum((["--set", o] for o in QUICK), [])]) == 2
    err = capsys.readouterr().err
    assert f"Cannot write to {tmp_path / 'locked'}" in err and "choose another output.dir" in err


def test_too_little_free_space_is_refused_before_anything_is_written(demo_preset, tmp_path, monkeypatch):
    import engine.training.disk_space as disk_space

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage._replace(free=50_000))
    event = run_error(demo_preset, tmp_path)
    assert "Not enough free disk space" in event["message"] and "0.0 GB free" in event["message"]
    assert "output.keep_last" in event["hint"]
    run_dir = next((tmp_path / "runs").iterdir())
    assert not list((run_dir / "checkpoints").iterdir()) and not list((run_dir / "state").iterdir())


def test_a_disk_that_fills_during_a_save_keeps_the_last_good_checkpoint(demo_preset, tmp_path, monkeypatch):
    from engine import atomic

    run_dir = create_run_dir(load_preset(demo_preset, [*QUICK, "training.max_steps=4", "output.save_every_n_steps=2"]),
                             root=tmp_path / "runs")
    real_write = atomic.atomic_write

    def fills_up(path, write):  # the disk fills between the checkpoint of step 2 and the final LoRA of step 4
        if Path(path).name == "demo.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, write)
    monkeypatch.setattr(atomic, "atomic_write", fills_up)
    assert train.run(run_dir) == 1
    error = read_all(run_dir / "events.jsonl")[-1]
    assert error["message"].startswith(f"The disk is full: cannot write to {run_dir}"), error["message"]
    assert "GB free there" in error["message"] and "resume" in error["hint"]
    assert (run_dir / "checkpoints" / "demo-step000002.safetensors").is_file()
    assert not list(run_dir.rglob("*.tmp"))
    monkeypatch.setattr(atomic, "atomic_write", real_write)  # space freed: the run resumes from step 2 and finishes
    assert train.run(run_dir, resume=True) == 0
    assert [e["step"] for e in read_all(run_dir / "events.jsonl") if e["kind"] == "step"][-2:] == [3, 4]
    assert (run_dir / "demo.safetensors").is_file()


def test_a_real_small_filesystem_is_refused_before_the_run_writes_its_saves(demo_preset, tmp_path):
    """On a 256 KB tmpfs (where this machine lets root mount one): the free-space check reads the real drive."""
    import os
    import subprocess

    mount = tmp_path / "small disk"
    mount.mkdir()
    if os.name == "nt" or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root on Linux")
    try:
        run_dir = create_run_dir(load_preset(demo_preset, QUICK), root=mount)
        assert train.run(run_dir) == 1
        error = read_all(run_dir / "events.jsonl")[-1]
        assert f"Not enough free disk space for this run in {run_dir}" in error["message"]
        assert not list((run_dir / "checkpoints").iterdir()) and not list((run_dir / "state").iterdir())
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_hub_folder_without_its_safety_checker_still_trains(demo_preset, tmp_path):
    """A common way to save 1.2 GB: model_index.json lists a safety_checker the folder does not have."""
    model = shutil.copytree(load_preset(demo_preset).model.path, tmp_path / "model")
    index = json.loads((model / "model_index.json").read_text(encoding="utf-8"))
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (model / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    run_dir = create_run_dir(load_preset(demo_preset, [*QUICK, f"model.path={model}"]), root=tmp_path / "runs")
    assert train.run(run_dir) == 0, read_all(run_dir / "events.jsonl")[-1]


def test_free_space_counts_what_a_resume_has_and_only_warns_for_the_cache(tmp_path, monkeypatch):
    import engine.training.disk_space as disk_space

    run_dir, cache = tmp_path / "run", tmp_path / "dataset" / "_easel" / "cache"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "old.safetensors").write_bytes(b"x" * 900)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage._replace(free=1_000))
    need = {"run": 1_500, "one_save": 400, "cache": 5_000}
    # 1,500 at most, 900 of it there already: 600 more fit in 1,000; the cache does not, which only warns
    warning = disk_space.check_free_space(run_dir, cache, need)
    assert warning and "kept in memory instead" in warning
    (run_dir / "checkpoints" / "old.safetensors").unlink()
    with pytest.raises(Exception, match="Not enough free disk space"):
        disk_space.check_free_space(run_dir, cache, need)
    # a dataset on a drive that is not there (unplugged): no crash here, the dataset check says so later
    class Unplugged:  # os as disk_space sees it, with the dataset's drive gone
        @staticmethod
        def stat(path):
            raise OSError(2, "No such device", str(path))
    monkeypatch.setattr(disk_space, "os", Unplugged)
    assert disk_space.check_free_space(run_dir, cache, {**need, "run": 500}) is None
