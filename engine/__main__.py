"""`python -m engine <command> ...` — one entry point; each command lives in the module that owns the feature.

The table maps a command to "module:function"; the module is imported only when its command runs, so
`python -m engine validate` stays fast and torch-free. Each function takes argv (list[str]) and returns an exit code.
"""
from __future__ import annotations

import importlib
import logging
import sys

COMMANDS = {
    "validate": ("engine.cli:validate", "check presets: python -m engine validate PRESET..."),
    "import": ("engine.cli:import_config", "another trainer's config as a preset: python -m engine import FILE > preset.yaml"),
    "train": ("engine.cli:train", "train: python -m engine train PRESET|RUN_DIR [--dry-run] [--resume RUN_DIR] [--set k=v]"),
    "demo": ("engine.demo:cli", "build a tiny model + dataset and train it end to end: python -m engine demo [FOLDER]"),
    "sample": ("engine.training.sample_run:cli", "render a DiT run's saved model: python -m engine sample RUN_DIR [--steps N] [--sampler S] [--out DIR]"),
    "check": ("engine.dataset_doctor.check_dataset:cli", "dataset doctor: python -m engine check DATASET [--trigger T] [--json]"),
    "fix": ("engine.dataset_doctor.fixes:cli", "apply dataset fixes (journaled, undoable): python -m engine fix DATASET ..."),
    "caption": ("engine.captions.captioning:cli", "caption images with a local model: python -m engine caption DATASET --model M"),
    "captions": ("engine.captions.edit:cli", "bulk caption edits with preview, backup and undo"),
    "lr-preview": ("engine.lr_preview:cli", "plot the LR of every component: python -m engine lr-preview PRESET --out lr.png"),
    "score": ("engine.rl.score:cli", "score images with a preset's RL rewards: python -m engine score PRESET [FOLDER | --samples RUN_DIR]"),
    "tensorboard": ("engine.tensorboard_view:cli", "show the runs' TensorBoard logs: python -m engine tensorboard [RUNS] [--port N]"),
    "doctor": ("engine.system_doctor:cli", "check this PC for training: GPU, driver, CUDA build, RAM, disk [--json]"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: python -m engine <command> ...\n")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<11} {help_text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from engine.registry import suggest
        print(f"error: unknown command {name!r}{suggest(name, COMMANDS)}; run `python -m engine --help`", file=sys.stderr)
        return 2
    # bitsandbytes (imported by peft) logs a harmless kernel-hub message on CPU at import; it alarms users.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    module_name, func_name = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
