"""The accelerator a run trains under (accelerate: mixed precision, the fp16 loss scale, several GPUs) and the
optimizer set it wraps: one optimizer and LR schedule per component (engine/training/optimizers.py), and what a
ReduceLROnPlateau schedule watches.
"""
from __future__ import annotations


def make_accelerator(mixed: str, device: str, fresh: bool = True):
    """`fresh`: forget an earlier run's accelerator state; not in a multi-GPU process, whose process group
    (distributed.start) is part of that state."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if fresh:
        AcceleratorState._reset_state(True)  # several runs in one process (tests, the GUI's demo) each get their own
    return Accelerator(mixed_precision=mixed, cpu=device == "cpu")


def plateau_watches(validation) -> str:
    """What ReduceLROnPlateau watches: the validation loss when the run holds out a split, else the training
    loss's moving average."""
    return "val_loss" if validation.folder or validation.fraction > 0 else "train_loss_ema"


def plateau_note(preset) -> dict:
    """For the started event: what a ReduceLROnPlateau schedule of this run watches (nothing without one)."""
    from engine.training.schedules import PLATEAU_WATCHES

    if not any(s.type == "ReduceLROnPlateau" for s in preset.schedules.values()):
        return {}
    watches = plateau_watches(preset.validation)
    return {"plateau_watches": watches, "plateau_watches_text": f"ReduceLROnPlateau watches {PLATEAU_WATCHES[watches]}"}


def make_optimizer_set(preset, trainables: dict, total: int, accelerator):
    from engine.training.optimizers import build_optimizers
    from engine.training.schedules import two_phase_cutoff

    params = {comp: [p for m in modules for p in m.parameters() if p.requires_grad]
              for comp, modules in trainables.items()}
    optim = build_optimizers(preset.optimizers, preset.schedules, params, total_steps=total,
                             te_lr_ratio=preset.network.te_lr_ratio,
                             te_train_steps=two_phase_cutoff(preset.network, total),
                             plateau_watches=plateau_watches(preset.validation))
    # accelerate handles the fp16 loss scale through its wrapped optimizers
    optim.optimizers = {c: accelerator.prepare_optimizer(o) for c, o in optim.optimizers.items()}
    return optim
