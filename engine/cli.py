"""`python -m engine validate` and `python -m engine train` (argument handling only; the loop is engine/training/loop.py).

Exit codes: 0 done (or stopped on request), 1 the run failed, 2 the preset or the command line is wrong.
Configuration problems print as one message listing every problem, never as a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.config.load import ConfigError, load_preset
from engine.config.save import dump_preset
from engine.runs import create_run_dir, is_run_dir

TRUE_WORDS = ("1", "true", "yes", "on")


def validate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine validate", description="Check presets; exit 2 if any "
                                     "has a problem.")
    parser.add_argument("presets", nargs="+", type=Path, help="YAML or JSON preset files")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.presets:
        try:
            load_preset(path, args.overrides)
            print(f"ok  {path}")
        except ConfigError as e:
            failed += 1
            print(f"BAD {e}", file=sys.stderr)
    return 2 if failed else 0


def import_config(argv: list[str]) -> int:
    """python -m engine import FILE [--set k=v] > preset.yaml: another trainer's config as an Easel preset; what has
    no Easel meaning is listed at its top (and on stderr)."""
    from engine.config.load import import_notes

    parser = argparse.ArgumentParser(prog="python -m engine import", description="Convert an EveryDream2 train.json, "
                                     "a FluxFlow optim_sched_config or a kohya_ss GUI preset into an Easel preset "
                                     "(YAML on stdout).")
    parser.add_argument("file", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set a key the file does not have, e.g. --set dataset.path=/data/set")
    args = parser.parse_args(argv)
    try:
        notes = import_notes(args.file)
        preset = load_preset(args.file, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = [f"# converted by Easel from {args.file.name}" + (f" ({notes[0]})" if notes else "")]
    for line in (notes[1] if notes else []):
        header.append(f"# not converted: {line}")
        print(f"not converted: {line}", file=sys.stderr)
    print("\n".join(header))
    print(dump_preset(preset), end="")
    return 0


def print_import_notes(path: Path) -> None:
    """Training straight from another trainer's config: say what it was and what had no Easel meaning."""
    from engine.config.load import import_notes

    try:
        notes = import_notes(path)
    except ConfigError:
        return  # load_preset says what is wrong
    if notes:
        print(f"{path.name}: read as an {notes[0]}" + (f"; not converted ({len(notes[1])}):" if notes[1] else ""),
              file=sys.stderr)
        for line in notes[1]:
            print(f"  {line}", file=sys.stderr)


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine train", description="Train from a preset (a new run folder) "
                                "or in an existing run folder.")
    p.add_argument("target", nargs="?", type=Path, help="preset file (YAML/JSON) or run folder")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run at its exact step; "
                   "RUN_DIR/checkpoints/NAME goes back to that kept checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved preset and the plan; load no model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset key, e.g. --set training.max_steps=500 (repeatable)")
    p.add_argument("--runs-root", type=Path, help="where to create the run folder (default: output.dir)")
    return p


def train(argv: list[str]) -> int:
    args = _train_parser().parse_args(argv)
    env = os.environ
    dry_run = args.dry_run or env.get("DRY_RUN", "").strip().lower() in TRUE_WORDS
    resume = args.resume
    overrides = list(args.overrides)
    resume_from = env.get("RESUME_FROM", "").strip()
    if resume_from and not resume:
        # The FLUX guide's RESUME_FROM names a run folder (exact resume) or a LoRA file to continue from.
        if Path(resume_from).is_dir():
            resume = Path(resume_from)
        else:
            overrides.append(f"network.init_from={resume_from}")
    if resume:
        if args.target is not None or args.overrides:
            print(f"error: resuming continues {resume} with its own preset.yaml; do not also give a preset or "
                  f"--set (edit that preset.yaml, or start a new run)", file=sys.stderr)
            return 2
        return _resume(resume, dry_run)
    if args.target is None:
        print("error: name a preset file or a run folder (or --resume RUN_DIR)", file=sys.stderr)
        return 2
    if args.target.is_dir():
        return _train_in(args.target, overrides, dry_run)
    if _under_launcher():  # every process would make its own run folder
        print(f"error: under accelerate launch, name a run folder, not a preset: set training.num_gpus in "
              f"{args.target.name} and start it with python -m engine train {args.target} (Easel starts accelerate "
              f"launch itself), or launch an existing run folder", file=sys.stderr)
        return 2
    print_import_notes(args.target)
    try:
        preset = load_preset(args.target, overrides, env)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        return _print_dry_run(preset)
    try:
        run_dir = create_run_dir(preset, args.runs_root)
    except OSError as e:  # RunFolderError: a read-only or full output folder, in words
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}", flush=True)
    return _run(run_dir, resume=False)


def _train_in(run_dir: Path, overrides: list[str], dry_run: bool) -> int:
    if not is_run_dir(run_dir):
        print(f"error: {run_dir} is a folder but not a run folder (it has no preset.yaml)", file=sys.stderr)
        return 2
    if overrides:
        print("error: --set cannot change a run folder's preset; edit its preset.yaml or start a new run",
              file=sys.stderr)
        return 2
    try:
        preset = load_preset(run_dir / "preset.yaml")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        return _print_dry_run(preset)
    if (run_dir / "state" / "state.pt").is_file():  # training.checkpoints.STATE_FILE; a stray .tmp does not count
        print(f"error: {run_dir} has already trained; continue it with --resume {run_dir}, or start a new run "
              f"from its preset: python -m engine train {run_dir / 'preset.yaml'}", file=sys.stderr)
        return 2
    return _run(run_dir, resume=False)


def _resume(target: Path, dry_run: bool) -> int:
    """target: a run folder (its latest state) or one of its kept checkpoints (RUN_DIR/checkpoints/NAME)."""
    from engine.training.checkpoints import checkpoint_state  # imports torch: a resume trains anyway

    run_dir, resume = target, True
    at_checkpoint = checkpoint_state(target)
    if at_checkpoint:
        run_dir, resume = at_checkpoint
        if not resume.is_file():
            print(f"error: {target.name} has no resume state ({resume.name} is not in {resume.parent}): it was saved "
                  f"before Easel kept a state with every checkpoint. Resume the latest state with --resume "
                  f"{run_dir}", file=sys.stderr)
            return 2
    elif not is_run_dir(run_dir):
        print(f"error: cannot resume {run_dir}: it is not a run folder (no preset.yaml there) nor one of its "
              f"checkpoints (RUN_DIR/checkpoints/NAME)", file=sys.stderr)
        return 2
    try:
        preset = load_preset(run_dir / "preset.yaml")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        return _print_dry_run(preset)
    return _run(run_dir, resume=resume)


def _print_dry_run(preset) -> int:
    from engine.data.plan import describe, plan_of

    print("# resolved preset")
    print(dump_preset(preset))
    print("# plan (dry run: no model loaded)")
    if preset.training.mode == "rl":
        from engine.rl.plan import describe_rl

        print(describe_rl(preset))
        if preset.rl.warmup_steps == 0 and preset.rl.prompts_file:  # RL alone needs no dataset
            _print_fit(preset, images=0)
            return 0
    if not preset.dataset.path or not Path(preset.dataset.path).is_dir():
        print(f"dataset folder not found: {preset.dataset.path or '(dataset.path is empty)'} — set dataset.path "
              f"(or DATA_DIR) to your image folder")
        _print_fit(preset, images=0)
        return 2
    plan = plan_of(preset)
    print(describe(plan))
    _print_fit(preset, images=plan.images + plan.reg_images)
    return 0


def _print_fit(preset, images: int) -> None:
    """Will it fit: the predicted peak VRAM and RAM against this PC's free memory (engine/models/fit/)."""
    from engine.models.families import memory_model
    from engine.models.fit import advice, describe_fit, estimate, fit_settings, model_sizes
    from engine.system_doctor import memory_now, query_nvidia_smi

    print("# will it fit (an estimate from the model's files; nothing loaded)")
    if memory_model(preset.model.family) is None:
        print(f"no memory estimate for model.family {preset.model.family} yet")
        return
    sizes, settings = model_sizes(preset.model), fit_settings(preset, captions=images)
    fit = estimate(sizes, settings)
    _, gpus = query_nvidia_smi()
    now = memory_now()
    free = now["gpu_free_gb"][0] if now["gpu_free_gb"] else None   # the engine trains on the first GPU
    name = gpus[0]["name"] if gpus else None
    options = advice(sizes, settings, free) if free is not None else []
    print("\n".join(describe_fit(fit, options, name, free, now["ram_total_gb"], now["ram_free_gb"])))


def _under_launcher() -> bool:
    from engine.training.distributed import under_launcher

    return under_launcher()


def _run(run_dir: Path, resume: bool | Path) -> int:
    from engine.training.distributed import relaunch, under_launcher

    num_gpus = load_preset(run_dir / "preset.yaml").training.num_gpus
    if num_gpus > 1 and not under_launcher():  # one engine process per GPU, started by accelerate launch
        return relaunch(run_dir, resume, num_gpus)
    from engine.rl.mode import RL_MODE  # these import torch: only now that a run really starts
    from engine.training.loop import run

    return run(run_dir, resume=resume, modes={"rl": RL_MODE})  # training may not import rl: its mode comes from here
