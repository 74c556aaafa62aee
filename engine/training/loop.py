"""The training loop: `run(run_dir)` trains the preset in run_dir/preset.yaml and streams events (DESIGN.md).

Reads top to bottom: run() -> the mode's set-up (modes/registry.py chooses it by the preset) -> its phases in order
(train_phases) -> finish(). The loop knows no mode: the phase being trained (r.phase, modes/phase.py) gives the loss
and backward passes, the saved files, the validation loss and the samples. Each step is `optimizer_step`
(micro-batches, backward, clip, step) then `at_boundary` (control files, validation, checkpoints, samples).
Exit codes: 0 done or stopped on request, 1 failed, 2 the preset is wrong.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from engine.config.load import ConfigError, load_preset
from engine.events import EventWriter
from engine.failures import NonFiniteLoss, describe, error_fields
from engine.lock import RunLock, RunLocked
from engine.models.families import capabilities
from engine.training import checkpoints as ckpt
from engine.training.console import ConsoleLog
from engine.training.modes.phase import Loop
from engine.training.modes.registry import mode_for
from engine.training.resume import save_resume_state
from engine.training.run_state import Run, freeze_finished_components

CONTROL_REQUESTS = ("stop", "save_now", "sample_now")


def run(run_dir: Path, resume: bool | Path = False, modes: dict | None = None) -> int:
    """resume: False (a new run), True (the latest state) or a kept checkpoint's state file. modes: training.mode
    -> Mode, for the modes defined above this package (engine/cli.py gives engine/rl's, which training may not
    import); they join modes/registry.py's."""
    from engine.training.distributed import is_main_process

    run_dir = Path(run_dir)
    if not is_main_process():  # another GPU's process under accelerate launch: the main one owns the folder
        return run_locked(run_dir, resume, lock=None, modes=modes)
    try:
        with RunLock(run_dir) as lock:
            return run_locked(run_dir, resume, lock, modes)
    except RunLocked as e:  # said on stderr, not as an event: the engine that holds the lock owns events.jsonl
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:  # the run folder itself cannot be written (read-only, full, gone): no events file either
        message, hint = describe(e)
        print(f"error: {message}\n  hint: {hint}", file=sys.stderr, flush=True)
        return 2


def run_locked(run_dir: Path, resume: bool | Path, lock: RunLock | None, modes: dict | None = None) -> int:
    """The run in this process; `lock` is None in the processes of a multi-GPU run that are not the main one: they
    write no events and no files (engine/training/distributed.py)."""
    from engine.training.distributed import WorkerEvents, rank
    from engine.training.tensorboard_sink import TensorBoardSink

    tensorboard = TensorBoardSink(run_dir / "tensorboard") if lock else None
    console = ConsoleLog()
    events = EventWriter(run_dir / "events.jsonl", echo=lambda event: (console(event), tensorboard(event))) \
        if lock else WorkerEvents(rank())
    preset = None
    try:
        if lock and lock.took_over:
            events.emit("warning", message=f"Took over the run folder from an engine that is no longer running "
                                           f"(process {lock.took_over.get('pid')}).")
        removed = ckpt.remove_unfinished_files(run_dir) if lock else []
        if removed:
            events.emit("warning", message=f"Removed {len(removed)} unfinished file(s) an interrupted save left "
                                           f"behind: {', '.join(p.name for p in removed)}.")
        preset = load_preset(run_dir / "preset.yaml")
        console.every = preset.output.log_every_n_steps
        mode = mode_for(preset.training, modes)  # before loading: a mode the caller did not give is said now
        if resume:
            ckpt.require_state(ckpt.state_file(run_dir, resume))  # decided before minutes of model loading
        r = mode.setup(run_dir, preset, events, resume)
        finish(r, train_phases(r, mode.phases))
        return 0
    except ConfigError as e:
        events.emit("error", message=str(e), hint="Fix these keys in the preset and start again.", traceback="")
        return 2
    except KeyboardInterrupt:  # Ctrl+C in a console: a stop, without a save half-way through a step
        events.emit("warning", message="Interrupted (Ctrl+C). The last checkpoint and its resume state are kept.")
        events.emit("stopped", step=None)
        return 0
    except Exception as e:  # noqa: BLE001 - every failure becomes an error event in the user's words
        sections = {} if preset is None else dict(training=preset.training, network=preset.network,
                                                  dataset=preset.dataset, model=preset.model,
                                                  unet_optimizer_type=preset.optimizers["unet"].type,
                                                  block_swap_max=capabilities(preset.model.family).block_swap_max)
        events.emit("error", **error_fields(e, **sections))
        return 1
    finally:
        events.close()
        if tensorboard:
            tensorboard.close()


# --------------------------------------------------------------------------------------------------- the loop

def train_phases(r: Run, phases: tuple) -> str:
    """The mode's phases in order, a resumed run from the last one it had begun; 'done', 'stopped' when
    control/stop asked for it, 'finished before' when a resumed run had nothing left to do."""
    if r.step >= r.total_steps:
        return "finished before"
    r.phase = phases[0]
    if r.step == 0 and r.preset.sampling.at_start:
        render_samples(r)  # the base model, for comparison
    now = max(i for i, phase in enumerate(phases) if phase.begun(r))
    # looked up now, not at import: a test's stand-in for report_step applies to every phase
    this_loop = Loop(train=loop, report_step=report_step, at_boundary=at_boundary, save_checkpoint=save_checkpoint)
    for phase in phases[now:]:
        r.phase = phase
        outcome = phase.train(r, this_loop)
        if outcome != "done":
            return outcome
    return "done"


def loop(r: Run, end: int) -> str:
    """Optimizer steps over r.batches until step `end` (at most total_steps: the benches move it); 'done', or
    'stopped' when control/stop asked for it."""
    per_step = r.preset.training.grad_accum * r.processes.world  # batches per step, over all GPUs
    end = min(end, r.total_steps)
    while r.step < end:
        batches = r.epoch_batches()
        group = batches[r.cursor:r.cursor + per_step]
        started = time.perf_counter()
        loss = optimizer_step(r, group)
        r.cursor += len(group)
        r.step += 1
        epoch_ended = r.cursor >= len(batches)
        if epoch_ended:
            r.epoch, r.cursor = r.epoch + 1, 0
        report_step(r, loss, time.perf_counter() - started)
        if r.compile_timer is not None:
            r.compile_timer.add(time.perf_counter() - started)
        if at_boundary(r, epoch_ended) == "stop":
            return "stopped"
    return "done"


def optimizer_step(r: Run, group: list[list[int]]) -> float:
    """One optimizer step over `group` (grad_accum batches per GPU, fewer at an epoch's end); returns the mean loss.

    The losses stay on the device until every micro-batch is done: one host sync per step (for the step event and
    the NaN check), not one per micro-batch, so the GPU is never idle waiting for Python between backward passes.
    With several GPUs each process trains its share of the group and DDP averages the gradients."""
    losses, files = [], []
    mine = r.processes.share(group)
    trained = [m for comp, modules in r.trainables.items() if r.optim.trainable(comp) for m in modules]
    for k, (number, indices) in enumerate(mine):
        with r.processes.training_forward(r.comps, trained, last_micro_batch=k == len(mine) - 1):
            loss, batch_files = r.phase.backward(
                r, lambda: r.batches(indices, r.epoch, r.cursor + number), len(mine))  # noqa: B023 - called now
        losses.append(loss.detach())
        files.append(batch_files)
    values = r.processes.all_losses(torch.stack(losses).float(), r.accelerator).tolist()  # the step's one sync
    if not all(math.isfinite(v) for v in values):  # before the optimizer step: the weights keep their last values
        files = [f for process_files in r.processes.gather(files) for f in process_files]
        value, batch_files = next((v, f) for v, f in zip(values, files) if not math.isfinite(v))
        raise NonFiniteLoss(r.step + 1, value, batch_files)
    clip = r.preset.training.clip_grad_norm
    if clip > 0:
        r.accelerator.clip_grad_norm_(r.params, clip)
    mean = sum(values) / len(values)
    r.optim.step(mean)
    r.optim.zero_grad()
    if r.ema is not None:
        r.ema.update(r.step + 1)
    freeze_finished_components(r)
    return mean


def report_step(r: Run, loss: float, seconds: float) -> None:
    r.s_per_it = seconds if r.s_per_it == 0 else 0.9 * r.s_per_it + 0.1 * seconds  # smoothed for a steady ETA
    vram = round(torch.cuda.max_memory_allocated() / 2**30, 2) if r.device == "cuda" else None
    # a phase's loss terms (the VAE's, RL's), read from the device in one sync
    values = torch.stack([v.float() for v in r.step_extras.values()]).tolist() if r.step_extras else []
    extras = {name: round(value, 6) for name, value in zip(r.step_extras, values)}
    r.emit("step", step=r.step, total_steps=r.total_steps, epoch=r.epoch + (1 if r.cursor else 0), loss=loss,
           lr=r.optim.lrs(), s_per_it=round(r.s_per_it, 4), eta_s=round(r.s_per_it * (r.total_steps - r.step), 1),
           vram_gb=vram, **extras)


def at_boundary(r: Run, epoch_ended: bool) -> str:
    """Stop, validate, save, sample: as boundary_plan says (the main process's plan, in every process)."""
    plan = r.processes.same_everywhere(boundary_plan(r, epoch_ended) if r.processes.is_main else None)
    if plan["stop"]:
        save_checkpoint(r)
        r.emit("stopped", step=r.step)
        return "stop"
    if plan["validate"]:
        validate(r)  # before the checkpoint, so its resume state knows the best files
    if plan["save"]:
        save_checkpoint(r)
    if plan["sample"]:
        render_samples(r)
    return "continue"


def boundary_plan(r: Run, epoch_ended: bool) -> dict:
    """Control files first (stop, save_now, sample_now: taken, then deleted), then the save and sample cadence."""
    control = r.run_dir / "control"
    asked = {name for name in CONTROL_REQUESTS if (control / name).exists()}
    for name in asked:
        (control / name).unlink(missing_ok=True)
    last = r.step >= r.total_steps  # the final save and samples come in finish()
    # a stop that arrives with the last step: finish normally, so the final LoRA is written
    stop = "stop" in asked and not last
    saving = "save_now" in asked or (not last and r.cadence.due(r.step, epoch_ended, r.epoch))
    every = r.preset.sampling.every_n_steps
    return {"stop": stop, "save": saving and not stop, "validate": not stop and not last and validation_due(r, saving),
            "sample": not stop and ("sample_now" in asked or (not last and every > 0 and r.step % every == 0))}


def validation_due(r: Run, saving: bool) -> bool:
    """validation.every_n_steps, or (0) with every checkpoint save; never without a validation split."""
    if r.best is None:
        return False
    every = r.preset.validation.every_n_steps
    return r.step % every == 0 if every else saving


def validate(r: Run) -> None:
    """The held-out loss; a new best (among the K lowest) is saved to checkpoints/best/ under its loss."""
    r.status("validating", f"Validation loss at step {r.step}")
    loss = r.phase.validation_loss(r) if r.processes.is_main else None
    loss = r.processes.same_everywhere(loss)  # every GPU's ReduceLROnPlateau must take the same decision
    r.optim.observe_validation(loss)
    if not r.processes.is_main:
        return
    if r.best.admits(loss):
        stem = r.best.stem(r.preset.output.run_name, r.epoch + (1 if r.cursor else 0), r.step, loss)
        r.phase.save(r, r.best.folder, stem)
        r.best.add(loss, r.step, stem)
    r.emit("val", step=r.step, val_loss=loss, best=r.best.best)


def finish(r: Run, outcome: str) -> None:
    """The samples and files of the last step, the state, and `done` (a stopped run has said `stopped`)."""
    if outcome == "stopped":
        return
    if outcome == "finished before":
        r.status("done", f"This run had already finished at step {r.step}; its files are in {r.run_dir}")
        r.emit("done", step=r.step)
        return
    render_samples(r, final=True)
    if r.best is not None:
        validate(r)
    if r.processes.is_main:
        r.phase.save(r, r.run_dir, r.preset.output.run_name)
    save_resume_state(r)
    r.emit("done", step=r.step)


def save_checkpoint(r: Run) -> None:
    """A numbered checkpoint in checkpoints/ with its own resume state (the oldest beyond keep_last go), plus the
    latest resume state in state/."""
    output = r.preset.output
    folder = r.run_dir / "checkpoints"
    stem = ckpt.checkpoint_stem(output.run_name, r.step)
    if r.processes.is_main:
        r.phase.save(r, folder, stem)
    save_resume_state(r)
    if r.processes.is_main:
        ckpt.keep_state_with(folder, stem, r.run_dir / "state" / ckpt.STATE_FILE)
        ckpt.prune(folder, output.run_name, output.keep_last)
    r.cadence.saved()


def render_samples(r: Run, final: bool = False) -> None:
    """The phase's samples (the main process renders them); the final samples add the evaluation prompts file's."""
    if r.processes.is_main:
        r.phase.render_samples(r, final)
