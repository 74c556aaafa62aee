"""How long the dataset doctor takes for 1,000 images (goal: ≤ 5 s on 2 cores).

    python bench/dataset_check_speed.py [--n 1000] [--width 1024] [--height 768] [--folder DIR] [--quick]

Generates the dataset once (JPEG q90 photos-like patterns, every 10th a PNG, each with a caption) into
--folder (default: a temp folder, reused between runs), then times check_dataset() and prints the figure.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def generate(folder: Path, n: int, width: int, height: int) -> None:
    from dataset_factory import caption_for, pattern, write_caption, write_image

    marker = folder / f".generated-{n}-{width}x{height}"
    if marker.exists():
        return
    for k in range(n):
        image = pattern(k, width, height) if k % 2 else pattern(k, height, width)
        ext, args = (".png", {}) if k % 10 == 0 else (".jpg", {"quality": 90})
        write_image(folder / f"image {k:04d}{ext}", image, **args)
        write_caption(folder / f"image {k:04d}.txt", caption_for(k))
    marker.write_text("", encoding="utf-8")


def _load() -> str:
    # Other work on the machine slows the figure down; print it so a slow result can be judged.
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "easel-bench-dataset")
    parser.add_argument("--quick", action="store_true", help="headers only (check_dataset(deep=False))")
    args = parser.parse_args(argv)
    folder = args.folder / f"{args.n}-{args.width}x{args.height}"
    t0 = time.perf_counter()
    generate(folder, args.n, args.width, args.height)
    print(f"dataset ready in {time.perf_counter() - t0:.1f} s: {folder}")

    t0, cpu0 = time.perf_counter(), time.process_time()
    from engine.dataset_doctor.check_dataset import check_dataset
    report = check_dataset(folder, trigger="ohwx", resolution_px=1024, batch_size=2, deep=not args.quick)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    mode = "headers only" if args.quick else "full (decode + hashes)"
    print(f"check_dataset: {len(report.images)} images, {args.width}x{args.height}, {mode}: {seconds:.2f} s wall, "
          f"{cpu_seconds:.2f} s CPU ({os.cpu_count()} cores, load average before: {_load()}), "
          f"{len(report.findings)} findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
