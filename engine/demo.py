"""`python -m engine demo [FOLDER]`: a whole training run on any PC in about a minute, nothing downloaded.

Builds a tiny random SD1.5-style model (engine.models.tiny) and 16 captioned pictures of coloured shapes (drawn with
PIL, the same bytes every time), writes FOLDER/demo-preset.yaml (presets/demo.yaml with the paths filled in) and
trains it: samples, a LoRA in kohya and diffusers format, events. `--prepare-only` stops after writing the preset and
prints its path as the last line of stdout (the GUI's Demo button uses this, then starts a normal run).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.runs import PROJECT_ROOT

DEMO_PRESET = PROJECT_ROOT / "presets" / "demo.yaml"
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
    args = parser.parse_args(argv)
    preset_path = prepare(args.folder)
    if args.prepare_only:
        _print(preset_path)
        return 0
    from engine.config.load import load_preset
    from engine.runs import create_run_dir
    from engine.training.loop import run

    run_dir = create_run_dir(load_preset(preset_path, args.overrides))
    _print(f"run folder: {run_dir}")
    code = run(run_dir)
    if code == 0:
        _print(f"done: the LoRA files are in {run_dir}")
    return code
