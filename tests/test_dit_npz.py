"""The DiT on a folder of .npz files (model.dit.conditioning: channels): the target generated from context arrays
stacked as channels (+ a coordinate grid), legacy key names through model.dit.array_aliases, a missing array
named with its file, and samples that show the generated target beside the ground truth."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config.load import load_preset
from engine.data.npz import coordinate_grid, load_arrays
from engine.events import read_all
from engine.runs import PROJECT_ROOT, create_run_dir
from engine.training import loop as train
from support.dit import DIT_PRESET as FLOW
from support.dit import TINY_DIT_PX as SIZE
from support.dit import TINY_DIT_RUN
from support.runs import errors, losses, train_run

TINY = [*TINY_DIT_RUN, "training.max_steps=3", "model.dit.conditioning=channels",
        "model.dit.target_array=target_goal", "model.dit.context_arrays=[robot_image, goal_image]"]


def make_npz_dataset(root, count=16, legacy=False, target_channels=1):
    """`count` files: robot_image a smooth random field in [-1, 1], goal_image its mirror, target_goal = -robot
    (a smooth function of a context channel); legacy: the robot array stored under its old key 'robot'."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE * 2 * np.pi
    for i in range(count):
        a, b, c = rng.uniform(0, 2 * np.pi, 3)
        robot = (np.sin(x + a) * np.cos(y + b) * 0.8 + 0.2 * np.sin(2 * x + c)).astype(np.float32)
        target = -robot if target_channels == 1 else np.stack([-robot] * target_channels)
        arrays = {"robot" if legacy else "robot_image": robot, "goal_image": robot[:, ::-1].copy(),
                  "target_goal": target.astype(np.float32)}
        np.savez(root / f"scene{i:02d}.npz", **arrays)
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_npz_dataset(tmp_path_factory.mktemp("npz scenes") / "data")


def start(tmp_path, data, *overrides):
    return train_run(FLOW, tmp_path / "runs", f"dataset.path={data}", *TINY, *overrides)


def test_the_dit_learns_a_target_from_its_context_channels(tmp_path, scenes):
    _, code, events = start(tmp_path, scenes, "training.max_steps=30")
    assert code == 0, errors(events)
    values = losses(events)
    assert len(values) == 30
    assert np.mean(values[-5:]) < 0.7 * np.mean(values[:5]), values


@pytest.mark.parametrize("grid, target_channels, expected_in", [(False, 1, 3), (True, 1, 5), (True, 3, 7)])
def test_the_built_dit_has_target_plus_context_channels_in_and_target_channels_out(
        tmp_path, grid, target_channels, expected_in):
    data = make_npz_dataset(tmp_path / "data", count=4, target_channels=target_channels)
    run_dir, code, events = start(tmp_path, data, f"model.dit.coordinate_grid={str(grid).lower()}",
                                  "training.max_steps=1", "training.batch_size=4")
    assert code == 0, errors(events)
    saved = run_dir / "dit-flow-diffusers"
    config = json.loads((saved / "transformer" / "config.json").read_text())
    assert (config["in_channels"], config["out_channels"]) == (expected_in, target_channels)
    settings = json.loads((saved / "easel_dit.json").read_text())
    assert settings["conditioning"] == "channels" and settings["coordinate_grid"] is grid
    assert (settings["target_channels"], settings["context_channels"]) == (target_channels, expected_in -
                                                                           target_channels)


def test_the_context_is_stacked_in_order_with_a_y_x_grid_in_minus_1_1(tmp_path):
    data = make_npz_dataset(tmp_path / "data", count=1)
    spec = {"target_array": "target_goal", "context_arrays": ["goal_image", "robot_image"],
            "coordinate_grid": True, "array_aliases": []}
    target, context = load_arrays(data / "scene00.npz", spec)
    stored = np.load(data / "scene00.npz")
    assert target.shape == (1, SIZE, SIZE) and context.shape == (4, SIZE, SIZE)
    assert torch.equal(target[0], torch.from_numpy(stored["target_goal"]))  # values as stored
    assert torch.equal(context[0], torch.from_numpy(stored["goal_image"]))
    assert torch.equal(context[1], torch.from_numpy(stored["robot_image"]))
    grid = coordinate_grid(SIZE, SIZE)
    assert torch.equal(context[2:], grid)
    assert grid[0, 0, 0] == -1 and grid[0, -1, 0] == 1 and torch.all(grid[0, :, 0] == grid[0, :, -1])  # y rows
    assert grid[1, 0, 0] == -1 and grid[1, 0, -1] == 1 and torch.all(grid[1, 0] == grid[1, -1])         # x columns


def test_a_legacy_key_loads_through_its_alias_and_trains(tmp_path):
    data = make_npz_dataset(tmp_path / "data", count=4, legacy=True)
    spec = {"target_array": "target_goal", "context_arrays": ["robot_image"], "coordinate_grid": False,
            "array_aliases": ["robot=robot_image"]}
    _, context = load_arrays(data / "scene00.npz", spec)
    assert torch.equal(context[0], torch.from_numpy(np.load(data / "scene00.npz")["robot"]))
    _, code, events = start(tmp_path, data, "training.max_steps=1", "training.batch_size=4")  # the default alias
    assert code == 0, errors(events)
    _, code, events = start(tmp_path, data, "training.max_steps=1", "model.dit.array_aliases=[]")
    assert code == 1 and "'robot_image'" in events[-1]["message"]


def test_a_missing_array_names_the_file_the_key_and_the_keys_it_has(tmp_path):
    data = make_npz_dataset(tmp_path / "data", count=3)
    np.savez(data / "scene01.npz", robot_image=np.zeros((SIZE, SIZE), np.float32))
    _, code, events = start(tmp_path, data)
    assert code == 1
    message = events[-1]["message"]
    assert str(data / "scene01.npz") in message and "'target_goal'" in message
    assert "it has robot_image" in message


def test_samples_show_the_generated_target_beside_the_ground_truth(tmp_path, scenes):
    _, code, events = start(tmp_path, scenes, "training.max_steps=2", "sampling.prompts=[a, b]",
                                  "sampling.steps=2", "validation.fraction=0.25")
    assert code == 0, errors(events)
    samples = [e for e in events if e["kind"] == "sample"]
    assert len(samples) == 2 and all(os.path.isfile(e["path"]) for e in samples)
    picture = np.asarray(Image.open(samples[0]["path"])).astype(float)
    assert picture.shape == (SIZE, 2 * SIZE, 3)  # generated | ground truth
    first_held = sorted(scenes.glob("*.npz"))  # the first sample is the first validation file's
    truths = [((np.clip(np.load(p)["target_goal"], -1, 1) + 1) * 127.5).round() for p in first_held]
    right = picture[:, SIZE:, 0]
    assert min(np.abs(right - t).max() for t in truths) <= 1
    assert np.abs(picture[:, :SIZE] - picture[:, SIZE:]).mean() > 1  # 2 steps of training: not the truth yet


def test_predict_sees_the_context_and_returns_target_channels(tmp_path):
    from engine.models.families.dit.record import DIT, configure

    preset = load_preset(FLOW, [*TINY, "model.dit.coordinate_grid=true"])
    comps = DIT.load(preset.model, torch.float32, "cpu")
    configure(comps, preset.training)
    comps.extra["objective"] = None  # t * 1000, the flow timestep
    comps.denoiser.eval()  # no label dropout: the same input gives the same output
    x_t, t = torch.randn(2, 1, SIZE, SIZE), torch.tensor([0.3, 0.7])
    context = torch.randn(2, 4, SIZE, SIZE)
    labels = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        a = DIT.predict(comps, x_t, t, {"class_labels": labels, "context": context})
        b = DIT.predict(comps, x_t, t, {"class_labels": labels, "context": context.flip(-1)})
        again = DIT.predict(comps, x_t, t, {"class_labels": labels, "context": context})
    assert a.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(a, again)
    assert not torch.allclose(a, b)  # the context channels reach the model


def test_arrays_that_do_not_fit_the_patch_size_are_refused_naming_the_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "odd.npz", robot_image=np.zeros((30, 30), np.float32), goal_image=np.zeros((30, 30), np.float32),
             target_goal=np.zeros((30, 30), np.float32))
    _, code, events = start(tmp_path, data)
    assert code == 1 and "odd.npz" in events[-1]["message"] and "patch_size (4)" in events[-1]["message"]


def test_a_resumed_channels_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    from run_control import stop_then_resume

    data = make_npz_dataset(tmp_path / "data", count=8, target_channels=3)  # 3-D target: the layers are refitted
    preset = load_preset(FLOW, [f"dataset.path={data}", *TINY, "training.max_steps=4", "training.batch_size=4",
                                "model.dit.coordinate_grid=true"])
    straight = create_run_dir(preset, root=tmp_path / "a")
    assert train.run(straight) == 0
    interrupted = create_run_dir(preset, root=tmp_path / "b")
    stop_then_resume(interrupted, monkeypatch, 2)
    by_step = lambda run: {e["step"]: e["loss"] for e in read_all(run / "events.jsonl") if e["kind"] == "step"}
    assert len(by_step(straight)) == 4
    assert by_step(interrupted) == pytest.approx(by_step(straight), rel=1e-5)


def test_the_sample_command_renders_a_channels_run_beside_its_truths(tmp_path, scenes):
    """python -m engine sample RUN_DIR reads the run's .npz contexts: the same sample files as during training."""
    import subprocess
    import sys

    run_dir, code, events = start(tmp_path, scenes, "training.max_steps=2", "sampling.prompts=[a, b]",
                                  "sampling.steps=2", "validation.fraction=0.25")
    assert code == 0, errors(events)
    result = subprocess.run([sys.executable, "-m", "engine", "sample", str(run_dir), "--steps", "2"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, encoding="utf-8",
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    paths = result.stdout.split()
    assert len(paths) == 2
    trained = [e["path"] for e in events if e["kind"] == "sample"]
    for rendered, during in zip(paths, trained):
        picture, before = np.asarray(Image.open(rendered)), np.asarray(Image.open(during))
        assert picture.shape == (SIZE, 2 * SIZE, 3)
        assert np.array_equal(picture[:, SIZE:], before[:, SIZE:])  # the same ground truth on the right
        assert np.abs(picture[:, :SIZE].astype(float) - before[:, :SIZE]).mean() < 1  # the final model, same seed


def test_the_dry_run_plan_counts_the_npz_files(scenes):
    from engine.data.plan import plan_of

    preset = load_preset(FLOW, [f"dataset.path={scenes}", *TINY, "training.max_steps=0", "training.max_epochs=2"])
    plan = plan_of(preset)
    assert plan.images == 16 and plan.bucket_counts == {f"{SIZE}x{SIZE}": 16} and plan.total_steps == 4
