"""The training loop: `run(run_dir)` trains the preset in run_dir/preset.yaml and streams events (DESIGN.md).

Reads top to bottom: run() -> setup() (engine/training/setup.py) -> loop() -> finish(). The loop fits on a screen;
each step is `optimizer_step` (micro-batches, backward, clip, step) then `at_boundary` (control files, checkpoints,
samples). Exit codes: 0 done or stopped on request, 1 failed, 2 the preset is wrong.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.config.load import ConfigError, load_preset
from engine.events import EventWriter
from engine.failures import NonFiniteLoss, describe, error_fields
from engine.lock import RunLock, RunLocked
from engine.training import checkpoints as ckpt
from engine.training.setup import Run, freeze_finished_components, idle_modules, named_trainables, \
    network_shape, park_idle, setup

CONTROL_REQUESTS = ("stop", "save_now", "sample_now")
LATER_PHASE_MODES = ("rl",)  # training modes whose training is a phase the caller gives run() (engine/rl)


def run(run_dir: Path, resume: bool | Path = False, phases: dict | None = None) -> int:
    """resume: False (a new run), True (the latest state) or a kept checkpoint's state file. phases: training.mode
    -> the phase that runs after the main training, as (run, loop module) -> outcome (engine/cli.py gives rl's,
    which this package may not import)."""
    from engine.training.distributed import is_main_process

    run_dir = Path(run_dir)
    if not is_main_process():  # another GPU's process under accelerate launch: the main one owns the folder
        return run_locked(run_dir, resume, lock=None, phases=phases)
    try:
        with RunLock(run_dir) as lock:
            return run_locked(run_dir, resume, lock, phases)
    except RunLocked as e:  # said on stderr, not as an event: the engine that holds the lock owns events.jsonl
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:  # the run folder itself cannot be written (read-only, full, gone): no events file either
        message, hint = describe(e)
        print(f"error: {message}\n  hint: {hint}", file=sys.stderr, flush=True)
        return 2


def run_locked(run_dir: Path, resume: bool | Path, lock: RunLock | None, phases: dict | None = None) -> int:
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
        later = (phases or {}).get(preset.training.mode)
        if preset.training.mode in LATER_PHASE_MODES and later is None:  # a caller's mistake, said before loading
            raise RuntimeError(f"training.mode {preset.training.mode} needs its phase: start it with python -m "
                               f"engine train")
        if resume:
            ckpt.require_state(ckpt.state_file(run_dir, resume))  # decided before minutes of model loading
        if preset.training.mode == "vae":  # the model's VAE alone
            from engine.training.vae_mode import setup_vae

            r = setup_vae(run_dir, preset, events, resume)
        else:
            r = setup(run_dir, preset, events, resume)
        # a run resumed inside a reflow iteration goes on there (its batches are that iteration's pairs)
        inside_reflow = r.reflow_iteration is not None and r.step < r.total_steps
        if later is not None:  # RL: the warmup (the main loop) and the RL epochs
            outcome = later(r, sys.modules[__name__])
        else:
            outcome = "done" if inside_reflow else loop(r)
        if outcome == "done" and preset.training.reflow_steps:  # EveryDream2's reflow iterations
            from engine.training.reflow import run_reflow

            outcome = run_reflow(r, loop)
        finish(r, outcome)
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
                                                  unet_optimizer_type=preset.optimizers["unet"].type)
        events.emit("error", **error_fields(e, **sections))
        return 1
    finally:
        events.close()
        if tensorboard:
            tensorboard.close()


class ConsoleLog:
    """engine.log's lines: every event but steps, and a step line every `every` steps (and the first and last)."""

    def __init__(self, every: int = 1):
        self.every = every

    def __call__(self, event: dict) -> None:
        if event["kind"] == "step" and self.every > 1 and event["step"] % self.every and \
                event["step"] not in (1, event["total_steps"]):
            return
        console_line(event)


def console_line(event: dict) -> None:
    """One human line per event on stdout (engine.log), the rest is in events.jsonl."""
    kind = event["kind"]
    if kind == "step":
        lrs = " ".join(f"{c}={v:.3g}" for c, v in event["lr"].items())
        text = (f"step {event['step']}/{event['total_steps']}  epoch {event['epoch']}  loss {event['loss']:.4f}  "
                f"lr {lrs}  {event['s_per_it']:.3f} s/it  eta {event['eta_s']:.0f} s")
    elif kind == "status":
        progress = f" {event['n']}/{event['total']}" if "total" in event else ""
        text = f"[{event['phase']}] {event['text']}{progress}"
    elif kind in ("warning", "error"):
        text = f"{kind.upper()}: {event['message']}" + (f"\n  hint: {event['hint']}" if event.get("hint") else "")
    elif kind == "val":
        text = f"validation at step {event['step']}: val_loss {event['val_loss']:.4f}  (best {event['best']:.4f})"
    elif kind == "rl":
        text = (f"RL epoch {event['rl_epoch']}: reward {event['reward_mean']:.4g} +- {event['reward_std']:.3g} over "
                f"{event['images']} images (min {event['reward_min']:.4g}, max {event['reward_max']:.4g})")
    elif kind in ("saved", "sample"):
        text = f"{kind}: {event['path']}"
    else:
        text = kind
    try:
        print(text, flush=True)
    except UnicodeEncodeError:  # Windows writes a redirected stdout in the ANSI code page; a path may not fit
        print(text.encode("ascii", "backslashreplace").decode("ascii"), flush=True)


# --------------------------------------------------------------------------------------------------- the loop

def loop(r: Run) -> str:
    """Train until total_steps; 'done', 'stopped' when control/stop asked for it, 'finished before' when a resumed
    run had nothing left to do."""
    per_step = r.preset.training.grad_accum * r.processes.world  # batches per step, over all GPUs
    if r.step >= r.total_steps:
        return "finished before"
    if r.step == 0 and r.preset.sampling.at_start:
        render_samples(r)  # the base model, for comparison
    end = min(r.phase_end, r.total_steps)  # reflow trains phase by phase; the benches move total_steps
    if r.preset.training.mode == "rl":
        r.status("training", f"Supervised warmup: steps {r.step + 1}-{end} on the dataset, then RL to step "
                             f"{r.total_steps}")
    elif r.reflow_iteration is None:
        r.status("training", f"Training {r.total_steps} steps from step {r.step}")
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
            if r.mode is not None:  # another training mode (the VAE's): its own losses and backward passes
                batch = r.batches(indices, r.epoch, r.cursor + number)
                loss = r.mode.backward(r, batch, len(mine))
            else:
                with r.accelerator.autocast():
                    batch = r.batches(indices, r.epoch, r.cursor + number)
                    loss = batch_loss(r, batch)
                r.accelerator.backward(loss / len(mine))
        losses.append(loss.detach())
        files.append(batch["files"])
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


def batch_loss(r: Run, batch: dict) -> torch.Tensor:
    """Weighted MSE between the prediction and the objective's target, per sample then averaged."""
    from engine.training.objectives import offset_noise

    training = r.preset.training
    x0 = batch["latents"].to(r.device, torch.float32)  # the noising math in fp32; only the model runs in half
    if "noise" in batch:  # reflow: the noise each x0 was generated from (engine/training/reflow.py)
        noise = batch["noise"].to(r.device, torch.float32)
    else:
        noise = torch.randn(x0.shape, generator=r.noise_gen, device=r.device)
        noise = offset_noise(noise, training.noise_offset, r.noise_gen)
    t = r.objective.sample_t(len(x0), r.noise_gen, r.device, image_tokens=x0.shape[-2] * x0.shape[-1] // 4)
    x_t = r.objective.add_noise(x0, noise, t).to(r.weight_dtype)
    pred = r.family.predict(r.comps, x_t, t, batch["cond"], batch["size_cond"])
    target = r.objective.target(x0, noise, t)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, x0.dim())))
    weight = batch["loss_weight"].float()
    if training.min_snr_gamma > 0:
        weight = weight * r.objective.min_snr_weight(t, training.min_snr_gamma).float()
    return (per_sample * weight).mean()


def report_step(r: Run, loss: float, seconds: float) -> None:
    r.s_per_it = seconds if r.s_per_it == 0 else 0.9 * r.s_per_it + 0.1 * seconds  # smoothed for a steady ETA
    vram = round(torch.cuda.max_memory_allocated() / 2**30, 2) if r.device == "cuda" else None
    # a mode's loss terms (the VAE's), read from the device in one sync
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


def finish(r: Run, outcome: str) -> None:
    """The samples and LoRA files of the last step, the state, and `done` (a stopped run has said `stopped`)."""
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
        save_network(r, r.run_dir, r.preset.output.run_name)
    save_resume_state(r)
    r.emit("done", step=r.step)


# --------------------------------------------------------------------------------------------------- saving

def save_checkpoint(r: Run) -> None:
    """A numbered checkpoint in checkpoints/ with its own resume state (the oldest beyond keep_last go), plus the
    latest resume state in state/."""
    output = r.preset.output
    folder = r.run_dir / "checkpoints"
    stem = ckpt.checkpoint_stem(output.run_name, r.step)
    if r.processes.is_main:
        save_network(r, folder, stem)
    save_resume_state(r)
    if r.processes.is_main:
        ckpt.keep_state_with(folder, stem, r.run_dir / "state" / ckpt.STATE_FILE)
        ckpt.prune(folder, output.run_name, output.keep_last)
    r.cadence.saved()


def save_resume_state(r: Run) -> None:
    """state/ (main process), with every process's random state: a resumed multi-GPU run draws the same noise."""
    rngs = r.processes.gather(ckpt.rng_state(r.noise_gen))
    if r.processes.is_main:
        ckpt.save_state(r.run_dir / "state", resume_state(r, rngs))


def save_network(r: Run, folder: Path, stem: str) -> None:
    """The trained network (its EMA when on) in every output format, each file self-checked."""
    if r.mode is not None:
        r.mode.save(r, folder, stem)
        return
    r.status("saving", f"Saving {stem}")
    pipeline = r.family.pipeline(r.comps)
    if r.comps.extra.get("rectified_flow"):
        from engine.models.families.sd.unet_flow import write_sampling_note

        write_sampling_note(folder, stem)
    # the self-check loads the file where each module is: idle ones stay in CPU RAM (FLUX's T5 would not fit)
    with (r.ema.applied() if r.ema else contextlib.nullcontext()):
        if r.preset.network.type == "full":
            r.emit("saved", path=str(ckpt.export_full(folder, stem, pipeline)), format="diffusers-folder",
                   step=r.step)
            return
        text_encoders = {name: te for name, te in zip(r.family.text_encoder_names, r.comps.text_encoders)}
        for path, fmt in ckpt.export_lora(folder, stem, r.preset.output.formats, r.comps.denoiser, text_encoders,
                                          pipeline, export_info(r), r.preset.output.save_precision):
            r.emit("saved", path=str(path), format=fmt, step=r.step)


def validation_due(r: Run, saving: bool) -> bool:
    """validation.every_n_steps, or (0) with every checkpoint save; never without a validation split."""
    if r.best is None:
        return False
    every = r.preset.validation.every_n_steps
    return r.step % every == 0 if every else saving


def validate(r: Run) -> None:
    """The held-out loss; a new best (among the K lowest) is saved to checkpoints/best/ under its loss."""
    from engine.training.validation import validation_loss

    r.status("validating", f"Validation loss at step {r.step}")
    measure = r.mode.validation_loss if r.mode is not None else validation_loss
    loss = measure(r) if r.processes.is_main else None
    loss = r.processes.same_everywhere(loss)  # every GPU's ReduceLROnPlateau must take the same decision
    r.optim.observe_validation(loss)
    if not r.processes.is_main:
        return
    if r.best.admits(loss):
        stem = r.best.stem(r.preset.output.run_name, r.epoch + (1 if r.cursor else 0), r.step, loss)
        save_network(r, r.best.folder, stem)
        r.best.add(loss, r.step, stem)
    r.emit("val", step=r.step, val_loss=loss, best=r.best.best)


def export_info(r: Run):
    from engine.data.samples import tag_frequency
    from engine.models.families.base import by_prediction
    from engine.models.lora_export import LoraExportInfo

    d = r.preset.dataset
    prediction = {"v_prediction": "v"}.get(r.objective.name, r.objective.name) if r.family.writes_prediction_type else ""
    return LoraExportInfo(
        title=r.preset.output.run_name,  # a rectified flow on SD2-v: prediction flow, the v model's base version
        base_model_version=by_prediction(r.family.kohya_base_model, r.objective.name, r.comps.prediction_type),
        architecture=by_prediction(r.family.modelspec_architecture, r.comps.extra.get("variant", ""),
                                   r.objective.name, r.comps.prediction_type), prediction_type=prediction,
        implementation=r.family.modelspec_implementation, training_started_at=r.started_at,
        resolution_px=(d.resolution_px, d.resolution_px), text_encoder_names=r.family.text_encoder_names,
        # sd-scripts counts the epoch being trained from 1: a run stopped inside its first epoch says 1
        steps=r.step, epoch=r.epoch + (1 if r.cursor else 0), tag_frequency=tag_frequency(r.samples, d.path),
        base_model_name=Path(r.preset.model.path).name, trigger_phrase=d.trigger,
        kohya_unet_names=r.family.kohya_unet_names,
        extra={"ss_seed": str(r.preset.training.seed), "ss_learning_rate": str(r.preset.optimizers["unet"].lr),
               "ss_v_parameterization": str(r.objective.name == "v_prediction")})


def resume_state(r: Run, rngs: list[dict]) -> dict:
    """`rngs`: every process's random state, the main process's first."""
    return {"step": r.step, "epoch": r.epoch, "cursor": r.cursor, "total_steps": r.total_steps,
            "started_at": r.started_at, "network": network_shape(r.preset.network),
            "samples": len(r.dataset_samples or r.samples),
            "weights": ckpt.trained_weights(named_trainables(r), r.trained_names),
            "reflow_iteration": r.reflow_iteration,
            "phase_state": {name: part.state_dict() if hasattr(part, "state_dict") else part
                            for name, part in r.phase_state.items()},
            "optim": r.optim.state_dict(), "rng": rngs[0], "rng_processes": rngs if len(rngs) > 1 else None,
            "ema": r.ema.state_dict() if r.ema else None, "best": r.best.state_dict() if r.best else None}


def render_samples(r: Run, final: bool = False) -> None:
    """Sample images with the current weights (engine.sampling.render renders them); a sample event per image.
    The final samples add the evaluation prompts file's."""
    from engine.sampling.prompts import read_prompts_file

    if not r.processes.is_main:
        return
    if r.mode is not None:  # the VAE's reconstructions
        r.mode.render_samples(r, final)
        return
    sampling = r.preset.sampling
    prompts = list(sampling.prompts) + (read_prompts_file(sampling.eval_prompts_file) if final else [])
    if not prompts:
        return
    r.status("sampling", f"Rendering {len(prompts)} prompt(s) at step {r.step}")
    started = time.perf_counter()
    size = (sampling.width_px or r.preset.dataset.resolution_px, sampling.height_px or r.preset.dataset.resolution_px)
    if not r.family.caps.base_model:  # no diffusers pipeline (the DiT): engine/sampling/scratch.py
        results = render_family_samples(r, prompts, size)
    else:
        results = render_pipeline_samples(r, prompts, size)
    if r.score_samples is not None:  # RL: each sample's reward beside it
        r.score_samples(results)
    for result in results:
        r.emit("sample", **result)
    # training s/it never includes this: the step timer stops before at_boundary
    r.status("sampling", f"{len(results)} sample(s) in {time.perf_counter() - started:.1f} s", seconds=round(
        time.perf_counter() - started, 2))


def render_family_samples(r: Run, prompts: list[str], size: tuple[int, int]) -> list[dict]:
    """A model without a pipeline (the DiT): its EMA weights when on; the global RNG is left as it was, so a
    resumed run draws what an uninterrupted one does."""
    from engine.sampling.render import save_samples
    from engine.sampling.scratch import render

    sampling = r.preset.sampling
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []), \
            (r.ema.applied() if r.ema else contextlib.nullcontext()), whole_model_on_device(r):
        images = render(r.family, r.comps, prompts, sampling, sampling.seed, size)
    return save_samples(images, prompts, sampling, size, r.run_dir / "samples", r.step,
                        extra_info={"Model": r.family.name, "Run": r.preset.output.run_name})


def render_pipeline_samples(r: Run, prompts: list[str], size: tuple[int, int]) -> list[dict]:
    """The family's diffusers pipeline, at every LoRA strength (engine/sampling/render.py), with the EMA weights
    when on: the samples show what the saved files hold."""
    from engine.sampling.render import sample_images

    sampling = r.preset.sampling
    cond = r.comps.extra.get("prompt_cond")
    cond = cond if cond and all(p in cond for p in prompts) else None
    with whole_model_on_device(r, text_encoders=cond is None), vae_in_pipeline_dtype(r), torch.no_grad(), \
            (r.ema.applied() if r.ema else contextlib.nullcontext()):
        results = sample_images(
            r.family.pipeline(r.comps), prompts, sampling.negative_prompt, sampling.seed, sampling.steps,
            sampling.guidance_scale, size[0], size[1], sampling.strengths, r.run_dir / "samples", r.step,
            extra_info={"Model": Path(r.preset.model.path).name, "LoRA": r.preset.output.run_name},
            # a flow model's default is flow Euler already (FLUX's, or use_flow_sampler's for a UNet)
            sampler=None if sampling.sampler == "default" or r.objective.name == "flow" else sampling.sampler,
            max_sequence_length=r.comps.extra.get("max_sequence_length", 77), prompt_cond=cond)
    return results


@contextlib.contextmanager
def vae_in_pipeline_dtype(r: Run):
    """The pipelines decode with the VAE in the denoiser's dtype (SDXL's upcasts an fp16 VAE itself when its config
    says so); a VAE kept in fp32 for encoding (vae_fp32) joins that dtype while sampling, then goes back."""
    vae, dtype = r.comps.vae, r.comps.denoiser.dtype
    if vae.dtype == dtype:
        yield
        return
    vae.to(dtype)
    try:
        yield
    finally:
        vae.to(r.comps.vae_dtype)


@contextlib.contextmanager
def whole_model_on_device(r: Run, text_encoders: bool = True):
    """Sampling and the LoRA self-check need every module on the device for a moment (the text encoders not when
    the sample prompts are encoded already)."""
    for module in idle_modules(r):
        if text_encoders or module is r.comps.vae:
            module.to(r.device)
    try:
        yield
    finally:
        park_idle(r)
