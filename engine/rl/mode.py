"""training.mode rl as a training mode (engine/training/modes/phase.py): the denoiser's set-up with RL's steps,
then two phases: the supervised warmup (rl.warmup_steps of the denoiser's training on the dataset) and the RL
epochs (phase.py). engine/cli.py hands RL_MODE to engine.training.loop.run: training may not import rl.

    run(run_dir, modes={"rl": RL_MODE})
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.rl.phase import train_rl
from engine.training.modes.denoiser import DENOISER
from engine.training.modes.denoiser_samples import render_samples
from engine.training.modes.phase import Loop, Mode
from engine.training.setup import setup


def rl_run_steps(preset, objective_name: str, dataset_steps: int, processes: int) -> tuple[int, int]:
    """(the warmup's steps, the run's): rl.warmup_steps of supervised training, RL until training.max_steps."""
    max_steps = preset.training.max_steps
    return min(preset.rl.warmup_steps, max_steps), max_steps


def setup_rl(run_dir: Path, preset, events, resume):
    """The denoiser's run, its LR schedule over the warmup and the RL steps."""
    return setup(run_dir, preset, events, resume, phase_steps=rl_run_steps)


def train_warmup(r, loop: Loop) -> str:
    """The supervised warmup: the denoiser's training on the dataset until r.main_steps."""
    r.status("training", f"Supervised warmup: steps {r.step + 1}-{min(r.main_steps, r.total_steps)} on the dataset, "
                         f"then RL to step {r.total_steps}")
    return loop.train(r, r.main_steps)


def rl_begun(r) -> bool:
    """A run resumed after its warmup goes on with RL epochs (the interrupted epoch rolls out afresh)."""
    return r.step >= r.main_steps


def render_scored_samples(r, final: bool = False) -> None:
    """The denoiser's samples, each with its reward (RL's trainer, which its phase keeps in r.phase_state)."""
    render_samples(r, final, score=r.phase_state["rl"].score_samples)


WARMUP = replace(DENOISER, name="warmup", train=train_warmup)
# saves and validates as the denoiser's phase; its steps are its own (RlTrainer), never the loop's backward
RL = replace(DENOISER, name="rl", begun=rl_begun, train=train_rl, render_samples=render_scored_samples)
RL_MODE = Mode(setup=setup_rl, phases=(WARMUP, RL))
