"""The one small interface of the training modes: a Mode is a set-up and its phases; a Phase says what differs
while it trains (its steps and status text, its batches, its loss and backward passes, what it saves, its validation
loss, its samples). engine/training/loop.py calls these and knows no mode or phase by name.

    Mode(setup, phases)        modes/registry.py chooses one by training.mode and training.reflow_steps
    Phase(name, begun, train, backward, save, validation_loss, render_samples)
    Loop(train, report_step, at_boundary, save_checkpoint)   what a phase's train may call of the loop

The phases of the modes (one file each): the denoiser's (LoRA / full fine-tune: modes/denoiser.py), the VAE's
(modes/vae.py), reflow's iterations after the denoiser's (modes/reflow.py), and RL's warmup and epochs
(engine/rl/mode.py: engine/rl imports training, never the other way round, so the entry point adds it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Loop:
    """The loop's functions a phase calls (engine/training/loop.py gives them); nothing else of the loop."""
    train: Callable            # (r, end) -> 'done' | 'stopped': optimizer steps over r.batches until step `end`
    report_step: Callable      # (r, loss, seconds) -> None: the step event
    at_boundary: Callable      # (r, epoch_ended) -> 'stop' | 'continue': control files, validation, saves, samples
    save_checkpoint: Callable  # (r) -> None: a numbered checkpoint and the resume state


@dataclass(frozen=True)
class Phase:
    """One stretch of a run's steps, and what it does differently from the others."""
    name: str
    begun: Callable            # (r) -> bool: a resumed run is in this phase already (the first phase: always)
    train: Callable            # (r, loop: Loop) -> 'done' | 'stopped': its steps from r.step, with its status text
    backward: Callable         # (r, load_batch, micro_batches) -> (loss, files): a micro-batch's loss, backward done
    save: Callable             # (r, folder, stem) -> None, emitting `saved` events
    validation_loss: Callable  # (r) -> float: the held-out loss (only called when the run has a validation split)
    render_samples: Callable   # (r, final) -> None, emitting `sample` events (main process only)


@dataclass(frozen=True)
class Mode:
    """A training mode: how its run is set up, and its phases in the order they train."""
    setup: Callable            # (run_dir, preset, events, resume) -> Run (restored when resuming)
    phases: tuple              # (Phase, ...): a resumed run goes on in the last one it had begun


def from_the_start(r) -> bool:
    """Phase.begun of a mode's first phase: every run is in it from its first step."""
    return True


def train_dataset(r, loop: Loop) -> str:
    """Phase.train of a phase that trains the dataset's batches until the first phase's end (r.main_steps)."""
    r.status("training", f"Training {r.total_steps} steps from step {r.step}")
    return loop.train(r, r.main_steps)
