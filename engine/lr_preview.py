"""The learning rate of every component at every step, computed and drawn without loading a model (torch-free).

    python -m engine lr-preview presets/flux-final.yaml --out lr.png [--csv lr.csv] [--steps N] [--set k=v ...]

The GUI imports this module directly (no torch): `lr_curves(preset)` gives the numbers and `lr_figure(curves, marks)`
a matplotlib Figure for gr.Plot. The numbers come from engine/training/schedules.py, the code the trainer steps, so the
preview is the run's LR exactly (tests/test_schedules.py checks it against torch's and diffusers' schedulers).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from engine.config.load import ConfigError, load_preset
from engine.training.schedules import Schedule, component_base_lrs, picks_own_lr, train_steps_of, two_phase_cutoff

COLORS = {"unet": "#1f77b4", "text_encoder": "#d62728"}
MARK_STYLES = {"checkpoint": ("#2ca02c", "--"), "sample": ("#9467bd", ":")}


def trained_components(preset) -> list[str]:
    """The components whose LR matters: the UNet/transformer, plus the text encoder when it trains (training.mode
    vae: the VAE, plus the discriminator with vae.gan). An optimizer
    that picks its own LR (Adafactor with relative_step) has no curve to draw."""
    if preset.training.mode == "vae":
        comps = ["vae"] + (["discriminator"] if preset.vae.gan else [])
    else:
        comps = ["unet"] + (["text_encoder"] if preset.network.train_text_encoder else [])
    return [c for c in comps if not picks_own_lr(preset.optimizers[c])]


def run_steps(preset) -> int:
    """The run's optimizer steps: training.max_steps, or max_epochs x the dataset's steps per epoch."""
    from engine.data.plan import plan_of, total_reflow_steps

    if preset.training.max_steps > 0:  # the reflow iterations train after them (the schedule spans both)
        return preset.training.max_steps + total_reflow_steps(preset.training, preset.training.num_gpus)
    # plan_of reads the dataset's image headers: only when epochs decide the length

    total = plan_of(preset).total_steps
    if total <= 0:
        raise ConfigError([("training.max_epochs", f"the dataset {preset.dataset.path!r} has no trainable images, so "
                                                   "the run length is unknown; set training.max_steps")])
    return total


def lr_curves(preset, total_steps: int | None = None) -> dict[str, list[float]]:
    """{component: [LR of optimizer step 1, 2, ..., total]}; after a two-phase cut-off the text encoder's LR is 0.
    ReduceLROnPlateau is drawn as it starts (its drops depend on the losses of the run)."""
    total = total_steps if total_steps is not None else run_steps(preset)
    comps = trained_components(preset)
    try:
        base_lrs = component_base_lrs(preset.optimizers, comps, preset.network.te_lr_ratio)
    except ValueError as e:
        raise ConfigError([("optimizers.unet.lr", str(e))]) from None
    cutoff = two_phase_cutoff(preset.network, total)
    curves = {}
    for comp in comps:
        steps = train_steps_of(comp, total, cutoff)
        try:
            sched = Schedule(preset.schedules[comp], base_lrs[comp], steps, f"schedules.{comp}")
        except ValueError as e:
            key, _, msg = str(e).partition(": ")
            raise ConfigError([(key, msg)]) from None
        curves[comp] = sched.curve(steps) + [0.0] * (total - steps)
    return curves


def lr_marks(preset, total_steps: int) -> dict[str, list[int]]:
    """The steps where checkpoints are saved and samples rendered (by steps; epoch saves need the dataset)."""
    from engine.data.plan import cadence

    sample = cadence(preset.sampling.every_n_steps, total_steps)
    if preset.sampling.prompts and total_steps and total_steps not in sample:
        sample.append(total_steps)  # the trainer always renders samples at the end
    return {"checkpoint": cadence(preset.output.save_every_n_steps, total_steps),
            "sample": sample if preset.sampling.prompts else []}


def lr_figure(curves: dict[str, list[float]], marks: dict[str, list[int]] | None = None, title: str = ""):
    """A matplotlib Figure (no pyplot: safe in the GUI's threads) of LR over optimizer steps, with marks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for comp, lrs in curves.items():
        ax.plot(range(1, len(lrs) + 1), lrs, color=COLORS.get(comp), linewidth=1.8,
                label=f"{comp} (peak {max(lrs, default=0):.3g})")
    for kind, steps in (marks or {}).items():
        color, style = MARK_STYLES.get(kind, ("gray", "-."))
        if kind == "sample":  # triangles along the top edge, so they stay visible where a checkpoint line is
            ax.plot(steps, [1.0] * len(steps), "v", color=color, markersize=6, clip_on=False,
                    transform=ax.get_xaxis_transform(), label="sample" if steps else None)
            continue
        for i, step in enumerate(steps):
            ax.axvline(step, color=color, linestyle=style, linewidth=0.9, alpha=0.8, label=kind if i == 0 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_xlim(0, max((len(v) for v in curves.values()), default=1) + 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Learning rate per component", pad=12)
    if curves or marks:
        ax.legend(loc="best", fontsize=8)
    return fig


def plot_lr(curves: dict[str, list[float]], marks: dict[str, list[int]] | None, out_path, title: str = "") -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lr_figure(curves, marks, title).savefig(out_path)
    return out_path


def write_csv(curves: dict[str, list[float]], out_path) -> Path:
    """step,<component>,... one row per optimizer step (1-based)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    comps = list(curves)
    with open(out_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *comps])
        for i in range(max((len(v) for v in curves.values()), default=0)):
            writer.writerow([i + 1, *(repr(curves[c][i]) for c in comps)])
    return out_path


def read_csv(path) -> dict[str, list[float]]:
    """The curves back from write_csv's file (for a process that runs the preview as a subprocess)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    comps = rows[0][1:]
    return {c: [float(r[i + 1]) for r in rows[1:]] for i, c in enumerate(comps)}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m engine lr-preview",
                                 description="Plot the learning rate of every component over the run.")
    ap.add_argument("preset", help="preset file (.yaml or .json)")
    ap.add_argument("--out", help="PNG to write, e.g. lr.png")
    ap.add_argument("--csv", help="CSV to write: step, then one column per component")
    ap.add_argument("--steps", type=int, help="run length in optimizer steps (default: from the preset)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset value")
    return ap


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not (args.out or args.csv):
        print("error: nothing to write; give --out lr.png and/or --csv lr.csv", file=sys.stderr)
        return 2
    try:
        preset = load_preset(args.preset, overrides=args.set)
        total = args.steps if args.steps else run_steps(preset)
        curves = lr_curves(preset, total)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wanted = ["unet"] + (["text_encoder"] if preset.network.train_text_encoder else [])
    for comp in [c for c in wanted if c not in curves]:
        print(f"{comp}: adafactor with relative_step picks its own LR during training; not plotted")
    if args.csv:
        print(f"wrote {write_csv(curves, args.csv)}")
    if args.out:
        marks = lr_marks(preset, total)
        print(f"wrote {plot_lr(curves, marks, args.out, title=f'{Path(args.preset).name}: {total} steps')}")
    for comp, lrs in curves.items():
        print(f"{comp}: peak {max(lrs):.3g}, first {lrs[0]:.3g}, last {lrs[-1]:.3g}")
    return 0
