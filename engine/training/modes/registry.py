"""The registry of training modes: training.mode -> its Mode (a set-up and its phases, modes/phase.py).

    mode = mode_for(preset.training, more={"rl": RL_MODE})     # engine/training/loop.py's run() asks it

training.reflow_steps > 0 chooses "reflow": the denoiser's phase, then reflow's iterations (validate allows reflow
with training.mode denoiser only). Modes defined above training (engine/rl's) come from the entry point that starts
the run (engine/cli.py), as entries of the same registry: training may not import them.
"""
from __future__ import annotations

from engine.training.modes.denoiser import DENOISER
from engine.training.modes.phase import Mode
from engine.training.modes.reflow import REFLOW, setup_reflow
from engine.training.modes.vae import VAE, setup_vae
from engine.training.setup import setup

MODES = {
    "denoiser": Mode(setup=setup, phases=(DENOISER,)),
    "reflow": Mode(setup=setup_reflow, phases=(DENOISER, REFLOW)),
    "vae": Mode(setup=setup_vae, phases=(VAE,)),
}


def mode_for(training, more: dict | None = None) -> Mode:
    """The Mode of training.mode (or of reflow, when training.reflow_steps > 0), among MODES and `more`."""
    modes = {**MODES, **(more or {})}
    name = "reflow" if training.reflow_steps else training.mode
    if name not in modes:  # a caller's mistake (engine/rl's modes come from python -m engine train), said early
        raise RuntimeError(f"training.mode {training.mode} needs its phase: start it with python -m engine train")
    return modes[name]
