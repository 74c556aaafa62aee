"""The Run record: everything the loop and the phases of a run work on, filled by the set-up (setup.py for the
denoiser, modes/vae.py for the VAE) and kept, as far as a resume needs it, in the resume state (resume.py).

Two small functions read it the same way everywhere: named_trainables (the trained modules under stable names, for
the resume state) and freeze_finished_components (two-phase text-encoder training).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.events import EventWriter


@dataclass
class Run:
    run_dir: Path
    preset: object
    events: EventWriter
    family: object
    comps: object
    objective: object
    trainables: dict          # optimizer component -> the modules whose parameters train
    params: list              # every trainable parameter (for clipping)
    optim: object             # engine.training.optimizers.OptimizerSet
    accelerator: object
    batches: object           # engine.data.cache.BatchSource (a phase may put its own: reflow's pairs)
    samples: list
    noise_gen: torch.Generator
    total_steps: int
    device: str
    weight_dtype: torch.dtype
    phase: object = None      # the modes.phase.Phase being trained: its loss, saves, samples, validation loss
    step: int = 0
    epoch: int = 0            # epochs completed
    cursor: int = 0           # batches of the current epoch already trained
    s_per_it: float = 0.0
    cadence: object = None
    ema: object = None        # checkpoints.Ema when training.ema.enabled
    compile_timer: object = None  # speed.CompileTimer when training.compile compiled something
    best: object = None       # validation.Best when there is a validation split
    processes: object = None  # distributed.Processes: this process among the run's (one GPU: rank 0 of 1)
    resume: object = False    # what setup() resumed from: True (the latest state) or a checkpoint's state file
    step_extras: dict = field(default_factory=dict)  # a phase's loss terms of the last step, for its step event
    # the steps of the first phase (the dataset's; an RL run's warmup); the reflow iteration being trained
    # (modes/reflow.py); the dataset's samples and batches while r.samples / r.batches are a later phase's
    main_steps: int | None = None
    reflow_iteration: int | None = None
    dataset_samples: list = field(default_factory=list)
    dataset_batches: object = None
    trained_names: dict = field(default_factory=dict)  # named_trainables key -> the names of its trained params
    # a later phase's own state (engine/rl's trainer): saved in the resume state through its state_dict()
    phase_state: dict = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)  # when training began (kept across resumes)
    _epoch_cache: dict = field(default_factory=dict)

    def emit(self, kind, **fields):
        return self.events.emit(kind, **fields)

    def status(self, phase, text, **progress):
        self.emit("status", phase=phase, text=text, **progress)

    def epoch_batches(self) -> list[list[int]]:
        from engine.data.samples import epoch_batches

        if self.epoch not in self._epoch_cache:
            self._epoch_cache = {self.epoch: epoch_batches(self.samples, self.preset.training.batch_size,
                                                           self.preset.training.seed, self.epoch)}
        return self._epoch_cache[self.epoch]


def named_trainables(r: Run) -> dict:
    return {f"{comp}.{i}": m for comp, modules in r.trainables.items() for i, m in enumerate(modules)}


def freeze_finished_components(r: Run) -> None:
    """Two-phase text-encoder training: once its phase is over, its adapter stops training."""
    for comp, modules in r.trainables.items():
        if comp in r.optim.optimizers and not r.optim.trainable(comp):
            for module in modules:
                for p in module.parameters():
                    p.requires_grad_(False)
