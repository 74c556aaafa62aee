"""`python -m engine demo [FOLDER]`: a whole training run on any PC in about a minute, nothing downloaded.

Builds a tiny random SD1.5-style model (engine.models.tiny) and 16 captioned pictures of coloured shapes (drawn with
PIL, the same bytes every time), writes FOLDER/demo-preset.yaml (presets/demo.yaml with the paths filled in) and
trains it: samples, a LoRA in kohya and diffusers format, events. `--prepare-only` stops after writing the preset and
prints its path as the last line of stdout (the GUI's Demo button uses this, then starts a normal run).

`--dit`: a small DiT trained from scratch on the same shapes (presets/dit-flow-matching.yaml at demo size: 32 px,
4 blocks of width 128), whose samples turn from noise into the shapes in about two minutes on two CPU cores; at
the end it prints how close the samples' colours came to the dataset's, at the first samples and the last.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.runs import PROJECT_ROOT

DEMO_PRESET = PROJECT_ROOT / "presets" / "demo.yaml"
DIT_PRESET = PROJECT_ROOT / "presets" / "dit-flow-matching.yaml"
# The guide's DiT defaults (batch 64, 64 px, lr 1e-4) need hours; this size learns the 16 shapes on a CPU in ~2 min
# (measured: 1200 steps at ~0.06 s/it on 2 cores).
DIT_DEMO = {"model": {"dit": {"depth": 4, "width": 128, "heads": 4, "patch_size": 4}},
            "dataset": {"resolution_px": 32, "bucketing": False},
            "training": {"max_steps": 1200, "batch_size": 16},
            "optimizers": {"unet": {"type": "adamw", "lr": 1.0e-3}},
            "schedules": {"unet": {"type": "cosine"}},
            "sampling": {"every_n_steps": 300, "steps": 20, "at_start": True},
            "output": {"run_name": "dit-demo", "save_every_n_steps": 600}}
COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 70), "yellow": (235, 200, 40)}
SHAPES = ("circle", "square", "triangle", "diamond")
IMAGE_PX = 96


def draw_shape(shape: str, colour: tuple, size_px: int = IMAGE_PX):
    """A coloured shape on a light background, slightly offset per shape so images differ in layout too."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size_px, size_px), (245, 242, 235))
    draw = ImageDraw.Draw(image)
    m = size_px // 5
    box = (m, m, size_px - m, size_px - m)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(size_px // 2, m), (size_px - m, size_px - m), (m, size_px - m)], fill=colour)
    else:
        c = size_px // 2
        draw.polygon([(c, m), (size_px - m, c), (c, size_px - m), (m, c)], fill=colour)
    return image


def make_dataset(folder: Path, trigger: str = "easeldemo") -> Path:
    """16 images (4 colours x 4 shapes) with captions, side by side; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            stem = f"{colour} {shape}"  # a space in every name: paths with spaces must work everywhere
            draw_shape(shape, rgb).save(folder / f"{stem}.png")
            (folder / f"{stem}.txt").write_text(f"{trigger}, a {colour} {shape}", encoding="utf-8")
    return folder


def prepare(folder: Path) -> Path:
    """Model, dataset and FOLDER/demo-preset.yaml (reusing a model and dataset already there); returns the preset."""
    from engine.config.load import preset_from_dict, read_preset_file
    from engine.config.save import save_preset

    folder = Path(folder).expanduser().resolve()
    model_dir = folder / "model"
    if not (model_dir / "model_index.json").is_file():
        from engine.models.tiny import build_tiny

        build_tiny("sd15", model_dir, seed=0)
    data = read_preset_file(DEMO_PRESET)
    dataset_dir = make_dataset(folder / "dataset", data.get("dataset", {}).get("trigger", "easeldemo"))
    data.setdefault("model", {})["path"] = str(model_dir)
    data.setdefault("dataset", {})["path"] = str(dataset_dir)
    data.setdefault("output", {})["dir"] = str(folder / "runs")
    return save_preset(preset_from_dict(data), folder / "demo-preset.yaml")


def prepare_dit(folder: Path) -> Path:
    """The shapes dataset and FOLDER/dit-demo-preset.yaml (DIT_PRESET at DIT_DEMO's size); returns the preset."""
    from engine.config.load import preset_from_dict, read_preset_file
    from engine.config.save import save_preset

    folder = Path(folder).expanduser().resolve()
    data = _merged(read_preset_file(DIT_PRESET), DIT_DEMO)
    data["dataset"]["path"] = str(make_dataset(folder / "dataset"))
    data.setdefault("output", {})["dir"] = str(folder / "runs")
    return save_preset(preset_from_dict(data), folder / "dit-demo-preset.yaml")


def _merged(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merged(base[key], value)
        else:
            base[key] = value
    return base


def colour_histogram(path: Path, size_px: int = 32):
    """[64] the image's colours, 4 levels per channel, as fractions of its pixels."""
    import numpy as np
    from PIL import Image

    levels = np.asarray(Image.open(path).convert("RGB").resize((size_px, size_px))) // 64
    counts = np.bincount((levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]).ravel(), minlength=64)
    return counts / counts.sum()


def histogram_distance(samples: list[Path], dataset: list[Path]) -> float:
    """Mean over the samples of the total-variation distance (0 = same colours, 1 = none shared) between a
    sample's colour histogram and the nearest dataset image's: noise is about 0.9, a drawn shape near 0."""
    import numpy as np

    data = [colour_histogram(p) for p in dataset]
    return float(np.mean([min(0.5 * np.abs(colour_histogram(s) - d).sum() for d in data) for s in samples]))


def report_progress(run_dir: Path, dataset_dir: Path) -> list[tuple[int, float]]:
    """(step, histogram distance of that step's samples) for every step that has samples."""
    samples = sorted((Path(run_dir) / "samples").glob("step*.png"))
    steps = sorted({int(p.name[4:10]) for p in samples})
    dataset = sorted(Path(dataset_dir).glob("*.png"))
    return [(step, histogram_distance([p for p in samples if p.name.startswith(f"step{step:06d}")], dataset))
            for step in steps]


def _print(text) -> None:
    try:
        print(text, flush=True)
    except UnicodeEncodeError:  # a redirected stdout on Windows uses the ANSI code page
        print(str(text).encode("ascii", "backslashreplace").decode("ascii"), flush=True)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=PROJECT_ROOT / "demo",
                        help="where the model, dataset and runs go (default: demo/ in the Easel folder)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the preset and print its path; do not train")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a demo preset key for this run, e.g. --set training.max_steps=30")
    parser.add_argument("--dit", action="store_true",
                        help="train a small DiT from scratch on the shapes instead (flow matching, ~2 min on a CPU)")
    args = parser.parse_args(argv)
    preset_path = prepare_dit(args.folder) if args.dit else prepare(args.folder)
    if args.prepare_only:
        _print(preset_path)
        return 0
    from engine.config.load import load_preset
    from engine.runs import create_run_dir
    from engine.training.loop import run

    run_dir = create_run_dir(load_preset(preset_path, args.overrides))
    _print(f"run folder: {run_dir}")
    code = run(run_dir)
    if code == 0 and args.dit:
        progress = report_progress(run_dir, load_preset(preset_path).dataset.path)
        _print("colour-histogram distance of the samples to the dataset (0 = the same colours, noise ~0.9): " +
               ", ".join(f"step {step}: {d:.3f}" for step, d in progress))
        _print(f"done: the DiT is in {run_dir}; render more with python -m engine sample \"{run_dir}\"")
    elif code == 0:
        _print(f"done: the LoRA files are in {run_dir}")
    return code
