"""Score images with a preset's rewards before a run: is the reward server up, does the CLIP folder load, which
images score high? (The GUI's RL tab, and `python -m engine score PRESET [FOLDER]`.)

    pairs = dataset_pairs(folder, caption_ext, limit)     # (image, its caption) of a dataset folder
    pairs = sample_pairs(run_dir, limit)                  # (image, its prompt) of a run's newest samples
    table = score_pairs(rl_config, pairs)                 # {"names", "rows": [{image, prompt, total, name: score}],
                                                          #  "mean", "std" of the totals}
Config problems raise engine.failures.UserError; a reward server that does not answer, RewardServerDown.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.failures import UserError

SCORE_LIMIT = 16  # enough to see a reward's spread without keeping a user waiting on a slow model


def dataset_pairs(folder: str, caption_ext: str = ".txt", limit: int = SCORE_LIMIT) -> list[tuple[Path, str]]:
    from engine.data.layout import find_items, read_caption

    root = Path(folder).expanduser() if folder else None
    if root is None or not root.is_dir():
        raise UserError(f"dataset.path: no such folder: {folder or '(empty)'}",
                        "Set the dataset folder on the Dataset tab, or score the last samples of a run.")
    items = find_items(root, caption_ext)[:limit]
    if not items:
        raise UserError(f"dataset.path: {root} holds no images.", "Put JPEG/PNG/WebP images in it.")
    return [(item.image, read_caption(item.caption) if item.caption else "") for item in items]


def sample_pairs(run_dir: Path, limit: int = SCORE_LIMIT) -> list[tuple[Path, str]]:
    """The newest sample images of a run, with the prompts they were rendered from (its events)."""
    events = Path(run_dir) / "events.jsonl"
    samples = []
    if events.is_file():
        for line in events.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if event.get("kind") == "sample" and Path(event.get("path", "")).is_file():
                samples.append((Path(event["path"]), event.get("prompt", "")))
    if not samples:
        raise UserError(f"The run in {run_dir} has no samples yet.",
                        "Score the dataset instead, or wait for the run's first samples.")
    return samples[-limit:]


def score_pairs(rl_config, pairs: list[tuple[Path, str]], device: str = "cpu") -> dict:
    from PIL import Image

    from engine.rl.rewards import RewardSet

    rewards = RewardSet.from_config(rl_config, device=device)
    images = []
    for path, _ in pairs:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError:
            raise UserError(f"{path} cannot be read as an image.", "Open it in an image viewer; replace or remove "
                                                                   "it.") from None
    prompts = [prompt for _, prompt in pairs]
    totals, parts = rewards(images, prompts)
    rows = [{"image": str(path), "prompt": prompt, "total": total, **{n: parts[n][i] for n in rewards.names}}
            for i, ((path, prompt), total) in enumerate(zip(pairs, totals))]
    mean = sum(totals) / len(totals)
    spread = (sum((v - mean) ** 2 for v in totals) / len(totals)) ** 0.5
    return {"names": list(rewards.names), "rows": rows, "mean": mean, "std": spread}


def table_text(table: dict) -> str:
    """The scores as aligned text: one row per image, the weighted total first."""
    names = table["names"]
    lines = [f"{'total':>10}  " + "  ".join(f"{n:>14}" for n in names) + "  image  (prompt)"]
    for row in table["rows"]:
        lines.append(f"{row['total']:10.4g}  " + "  ".join(f"{row[n]:14.4g}" for n in names) +
                     f"  {Path(row['image']).name}  ({row['prompt'][:60]})")
    lines.append(f"mean {table['mean']:.4g}, std {table['std']:.3g} over {len(table['rows'])} image(s)")
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    """python -m engine score PRESET [FOLDER | --samples RUN_DIR] [--set k=v]: the preset's rewards on images."""
    import argparse
    import sys

    from engine.config.load import ConfigError, load_preset
    from engine.rl.rewards import RewardServerDown

    parser = argparse.ArgumentParser(prog="python -m engine score", description=cli.__doc__)
    parser.add_argument("preset", type=Path)
    parser.add_argument("folder", nargs="?", help="images to score (default: the preset's dataset.path)")
    parser.add_argument("--samples", type=Path, metavar="RUN_DIR", help="score a run's newest samples instead")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        preset = load_preset(args.preset, args.overrides)
        pairs = sample_pairs(args.samples) if args.samples else \
            dataset_pairs(args.folder or preset.dataset.path, preset.dataset.caption_ext)
        print(table_text(score_pairs(preset.rl, pairs)))
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
    except UserError as e:
        print(f"error: {e.message}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
    except RewardServerDown as e:
        print(f"error: {e}\n  hint: start the reward server, or fix rl.reward_server_url", file=sys.stderr)
    return 2
