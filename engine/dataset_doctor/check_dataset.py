"""The dataset doctor: finds what would spoil a training run before it starts (torch-free; the GUI imports it).

    report = check_dataset(Path("my_set"), trigger="ohwx", resolution_px=1024, batch_size=2)
    for f in report.findings: print(f.severity, f.message, f.hint)     # plain data; report.to_dict() for JSON

Each check is one function `(scan) -> list[Finding]` in CHECKS (doctor/checks.py), in the order the user should
deal with them; the report's data classes are doctor/report.py. Reading the image files themselves (headers,
decoding, truncation, hashes) is engine.data.images.
CLI: python -m engine check DATASET [--trigger T] [--resolution R] [--min-bucket PX] [--max-bucket PX]
     [--bucket-step PX] [--no-bucketing] [--batch-size B] [--json] [--quick]
Buckets are assigned by engine.data.buckets.bucket_of under the preset's dataset settings, exactly as the trainer does.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from engine.config.schema import DatasetConfig
from engine.data import layout
from engine.data.buckets import bucket_of
from engine.data.images import probe_all
from engine.dataset_doctor.checks import CHECKS, Scan, bucket_counts
from engine.dataset_doctor.report import Finding, ImageRow, Report, format_report

_DATASET = DatasetConfig()  # the bucket settings' defaults are the trainer's


def check_dataset(root: Path, trigger: str | None = None, resolution_px: int = 1024, batch_size: int = 1,
                  token_limit: int = 77, deep: bool = True, caption_ext: str = ".txt", *,
                  bucketing: bool = _DATASET.bucketing, min_bucket_px: int = _DATASET.min_bucket_px,
                  max_bucket_px: int = _DATASET.max_bucket_px,
                  bucket_step_px: int = _DATASET.bucket_step_px) -> Report:
    """Check the dataset folder `root` (either layout) and return a Report of findings and per-image rows.

    trigger: the trigger word every caption should contain (None: not checked).
    resolution_px / batch_size: the training settings that decide buckets, small images and small buckets.
    bucketing / min_bucket_px / max_bucket_px / bucket_step_px: the preset's dataset section (defaults: the
    schema's), so the buckets are the ones the trainer will use.
    token_limit: the text encoder's limit including start/end markers (77 for CLIP; 512 for FLUX's T5).
    deep: decode every image (finds truncated files and near duplicates); False reads headers only (faster).
    """
    started = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"The dataset folder {root} does not exist.")
    dataset = replace(_DATASET, resolution_px=resolution_px, bucketing=bucketing, min_bucket_px=min_bucket_px,
                      max_bucket_px=max_bucket_px, bucket_step_px=bucket_step_px)
    if bucketing and not min_bucket_px <= resolution_px <= max_bucket_px:  # as engine.config.load refuses to train
        raise ValueError(f"The resolution {resolution_px} px must lie between the smallest bucket side "
                         f"({min_bucket_px} px) and the largest ({max_bucket_px} px).")
    items = layout.find_items(root, caption_ext)
    infos = probe_all([i.image for i in items], deep=deep)
    assigned = {i.path: bucket_of((i.width, i.height), dataset) for i in infos if i.problem is None}
    captions = {item.image: layout.read_caption(item.caption) for item in items if item.caption is not None}
    scan = Scan(root, items, infos, captions, assigned, trigger, resolution_px, batch_size, token_limit)
    findings = [finding for check in CHECKS for finding in check(scan)]
    return Report(root=str(root), layout=layout.layout(root), findings=findings, images=_rows(scan, findings),
                  settings={"trigger": trigger, "resolution_px": resolution_px, "batch_size": batch_size,
                            "token_limit": token_limit, "deep": deep, "bucketing": bucketing,
                            "min_bucket_px": min_bucket_px, "max_bucket_px": max_bucket_px,
                            "bucket_step_px": bucket_step_px},
                  buckets=bucket_counts(scan), seconds=round(time.perf_counter() - started, 3))


def _rows(scan: Scan, findings: list[Finding]) -> list[ImageRow]:
    codes: dict[str, list[str]] = {}
    for f in findings:
        for path in f.files:
            codes.setdefault(path, []).append(f.code)
    rows = []
    for item, info in zip(scan.items, scan.infos):
        rel = scan.rel(item.image)
        rows.append(ImageRow(rel, info.width, info.height, info.format, info.mode, info.n_bytes,
                             scan.assigned.get(item.image), scan.captions.get(item.image), codes.get(rel, [])))
    return rows


def cli(argv: list[str]) -> int:
    """python -m engine check DATASET ...; exit code 1 when there are errors, else 0."""
    parser = argparse.ArgumentParser(prog="python -m engine check", description="Check a dataset before training.")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--trigger", help="the trigger word every caption should contain")
    parser.add_argument("--resolution", type=int, default=1024, help="training resolution in px (default 1024)")
    parser.add_argument("--min-bucket", type=int, default=_DATASET.min_bucket_px,
                        help=f"smallest bucket side in px (default {_DATASET.min_bucket_px})")
    parser.add_argument("--max-bucket", type=int, default=_DATASET.max_bucket_px,
                        help=f"largest bucket side in px (default {_DATASET.max_bucket_px})")
    parser.add_argument("--bucket-step", type=int, default=_DATASET.bucket_step_px,
                        help=f"bucket sides are multiples of this (default {_DATASET.bucket_step_px})")
    parser.add_argument("--no-bucketing", action="store_true", help="train every image square at the resolution")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--token-limit", type=int, default=77, help="text encoder token limit (77 CLIP, 512 T5)")
    parser.add_argument("--quick", action="store_true", help="read headers only (no truncation/near-duplicates)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="replace")  # a Windows log file is cp1252: odd file names must not crash us
    try:
        report = check_dataset(args.dataset, args.trigger, args.resolution, args.batch_size, args.token_limit,
                               deep=not args.quick, bucketing=not args.no_bucketing, min_bucket_px=args.min_bucket,
                               max_bucket_px=args.max_bucket, bucket_step_px=args.bucket_step)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False, indent=1) + "\n")
    else:
        sys.stdout.write(format_report(report) + "\n")
    return 1 if report.errors else 0
