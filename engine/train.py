"""The training loop: `run(run_dir)` trains the preset in run_dir/preset.yaml and streams events (DESIGN.md).

Reads top to bottom: run() -> setup() -> loop() -> finish(). The loop fits on a screen; each step is
`optimizer_step` (micro-batches, backward, clip, step) then `at_boundary` (control files, checkpoints, samples).
Exit codes: 0 done or stopped on request, 1 failed, 2 the preset is wrong.
"""
from __future__ import annotations

import contextlib
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import checkpoints as ckpt
from engine.config import ConfigError, load_preset, preset_to_dict
from engine.events import EventWriter
from engine.failures import NonFiniteLoss, UserError, error_fields

CONTROL_REQUESTS = ("stop", "save_now", "sample_now")


def run(run_dir: Path, resume: bool = False) -> int:
    run_dir = Path(run_dir)
    events = EventWriter(run_dir / "events.jsonl", echo=console_line)
    preset = None
    try:
        preset = load_preset(run_dir / "preset.yaml")
        r = setup(run_dir, preset, events, resume)
        outcome = loop(r)
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
                                                  dataset=preset.dataset,
                                                  unet_optimizer_type=preset.optimizers["unet"].type)
        events.emit("error", **error_fields(e, **sections))
        return 1
    finally:
        events.close()


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
    elif kind in ("saved", "sample"):
        text = f"{kind}: {event['path']}"
    else:
        text = kind
    try:
        print(text, flush=True)
    except UnicodeEncodeError:  # Windows writes a redirected stdout in the ANSI code page; a path may not fit
        print(text.encode("ascii", "backslashreplace").decode("ascii"), flush=True)


# --------------------------------------------------------------------------------------------------- the run state

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
    optim: object             # engine.optim.OptimizerSet
    accelerator: object
    batches: object           # engine.cache.BatchSource
    samples: list
    noise_gen: torch.Generator
    total_steps: int
    steps_per_epoch: int
    device: str
    weight_dtype: torch.dtype
    step: int = 0
    epoch: int = 0            # epochs completed
    cursor: int = 0           # batches of the current epoch already trained
    s_per_it: float = 0.0
    cadence: object = None
    ema: object = None        # checkpoints.Ema when training.ema.enabled
    _epoch_cache: dict = field(default_factory=dict)

    def emit(self, kind, **fields):
        return self.events.emit(kind, **fields)

    def status(self, phase, text, **progress):
        self.emit("status", phase=phase, text=text, **progress)

    def epoch_batches(self) -> list[list[int]]:
        from engine.data import epoch_batches

        if self.epoch not in self._epoch_cache:
            self._epoch_cache = {self.epoch: epoch_batches(self.samples, self.preset.training.batch_size,
                                                           self.preset.training.seed, self.epoch)}
        return self._epoch_cache[self.epoch]


# --------------------------------------------------------------------------------------------------- the loop

def loop(r: Run) -> str:
    """Train until total_steps; 'done', 'stopped' when control/stop asked for it, 'finished before' when a resumed
    run had nothing left to do."""
    accum = r.preset.training.grad_accum
    if r.step >= r.total_steps:
        return "finished before"
    if r.step == 0 and r.preset.sampling.at_start:
        render_samples(r)  # the base model, for comparison
    r.status("training", f"Training {r.total_steps} steps from step {r.step}")
    while r.step < r.total_steps:
        batches = r.epoch_batches()
        group = batches[r.cursor:r.cursor + accum]
        started = time.perf_counter()
        loss = optimizer_step(r, group)
        r.cursor += len(group)
        r.step += 1
        epoch_ended = r.cursor >= len(batches)
        if epoch_ended:
            r.epoch, r.cursor = r.epoch + 1, 0
        report_step(r, loss, time.perf_counter() - started)
        if at_boundary(r, epoch_ended) == "stop":
            return "stopped"
    return "done"


def optimizer_step(r: Run, group: list[list[int]]) -> float:
    """One optimizer step over `group` (grad_accum batches, fewer at an epoch's end); returns the mean loss."""
    losses = []
    for k, indices in enumerate(group):
        with r.accelerator.autocast():
            batch = r.batches(indices, r.epoch, r.cursor + k)
            loss = batch_loss(r, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(r.step + 1, loss.item(), batch["files"])
        r.accelerator.backward(loss / len(group))
        losses.append(loss.item())
    clip = r.preset.training.clip_grad_norm
    if clip > 0:
        r.accelerator.clip_grad_norm_(r.params, clip)
    mean = sum(losses) / len(losses)
    r.optim.step(mean)
    r.optim.zero_grad()
    if r.ema is not None:
        r.ema.update()
    freeze_finished_components(r)
    return mean


def batch_loss(r: Run, batch: dict) -> torch.Tensor:
    """Weighted MSE between the prediction and the objective's target, per sample then averaged."""
    from engine.objectives import offset_noise

    training = r.preset.training
    x0 = batch["latents"].to(r.device, torch.float32)  # the noising math in fp32; only the model runs in half
    noise = torch.randn(x0.shape, generator=r.noise_gen, device=r.device)
    noise = offset_noise(noise, training.noise_offset, r.noise_gen)
    t = r.objective.sample_t(len(x0), r.noise_gen, r.device)
    x_t = r.objective.add_noise(x0, noise, t).to(r.weight_dtype)
    pred = r.family.predict(r.comps, x_t, t, batch["cond"], batch["size_cond"])
    target = r.objective.target(x0, noise, t)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, x0.dim())))
    weight = batch["loss_weight"].float()
    if training.min_snr_gamma > 0:
        weight = weight * r.objective.min_snr_weight(t, training.min_snr_gamma).float()
    return (per_sample * weight).mean()


def freeze_finished_components(r: Run) -> None:
    """Two-phase text-encoder training: once its phase is over, its adapter stops training."""
    for comp, modules in r.trainables.items():
        if comp in r.optim.optimizers and not r.optim.trainable(comp):
            for module in modules:
                for p in module.parameters():
                    p.requires_grad_(False)


def report_step(r: Run, loss: float, seconds: float) -> None:
    r.s_per_it = seconds if r.s_per_it == 0 else 0.9 * r.s_per_it + 0.1 * seconds  # smoothed for a steady ETA
    vram = round(torch.cuda.max_memory_allocated() / 2**30, 2) if r.device == "cuda" else None
    r.emit("step", step=r.step, total_steps=r.total_steps, epoch=r.epoch + (1 if r.cursor else 0), loss=loss,
           lr=r.optim.lrs(), s_per_it=round(r.s_per_it, 4), eta_s=round(r.s_per_it * (r.total_steps - r.step), 1),
           vram_gb=vram)


def at_boundary(r: Run, epoch_ended: bool) -> str:
    """Control files first (stop, save_now, sample_now: acted on, then deleted), then the save and sample cadence."""
    control = r.run_dir / "control"
    asked = {name for name in CONTROL_REQUESTS if (control / name).exists()}
    if "stop" in asked:
        save_checkpoint(r)
        (control / "stop").unlink(missing_ok=True)
        r.emit("stopped", step=r.step)
        return "stop"
    last = r.step >= r.total_steps  # the final save and samples come in finish()
    if "save_now" in asked or (not last and r.cadence.due(r.step, epoch_ended, r.epoch)):
        save_checkpoint(r)
        (control / "save_now").unlink(missing_ok=True)
    every = r.preset.sampling.every_n_steps
    if "sample_now" in asked or (not last and every > 0 and r.step % every == 0):
        render_samples(r)
        (control / "sample_now").unlink(missing_ok=True)
    return "continue"


def finish(r: Run, outcome: str) -> None:
    """The samples and LoRA files of the last step, the state, and `done` (a stopped run has said `stopped`)."""
    if outcome == "stopped":
        return
    if outcome == "finished before":
        r.status("done", f"This run had already finished at step {r.step}; its files are in {r.run_dir}")
        r.emit("done", step=r.step)
        return
    render_samples(r)
    save_network(r, r.run_dir, r.preset.output.run_name)
    ckpt.save_state(r.run_dir / "state", resume_state(r))
    r.emit("done", step=r.step)


# --------------------------------------------------------------------------------------------------- saving

def save_checkpoint(r: Run) -> None:
    """A numbered checkpoint in checkpoints/ (the oldest beyond keep_last go) plus the resume state."""
    output = r.preset.output
    folder = r.run_dir / "checkpoints"
    save_network(r, folder, ckpt.checkpoint_stem(output.run_name, r.step))
    ckpt.prune(folder, output.run_name, output.keep_last)
    ckpt.save_state(r.run_dir / "state", resume_state(r))
    r.cadence.saved()


def save_network(r: Run, folder: Path, stem: str) -> None:
    """The trained network (its EMA when on) in every output format, each file self-checked."""
    r.status("saving", f"Saving {stem}")
    pipeline = r.family.pipeline(r.comps)
    with whole_model_on_device(r), (r.ema.applied() if r.ema else contextlib.nullcontext()):
        if r.preset.network.type == "full":
            r.emit("saved", path=str(ckpt.export_full(folder, stem, pipeline)), format="diffusers-folder",
                   step=r.step)
            return
        text_encoders = {name: te for name, te in zip(r.family.text_encoder_names, r.comps.text_encoders)}
        for path, fmt in ckpt.export_lora(folder, stem, r.preset.output.formats, r.comps.denoiser, text_encoders,
                                          pipeline, export_info(r), r.preset.output.save_precision):
            r.emit("saved", path=str(path), format=fmt, step=r.step)


def export_info(r: Run):
    from engine.data import tag_frequency
    from engine.lora import LoraExportInfo

    d = r.preset.dataset
    prediction = {"v_prediction": "v"}.get(r.objective.name, r.objective.name)
    return LoraExportInfo(
        title=r.preset.output.run_name, base_model_version=r.family.kohya_base_model,
        architecture=r.family.modelspec_architecture, prediction_type=prediction,
        resolution_px=(d.resolution_px, d.resolution_px), text_encoder_names=r.family.text_encoder_names,
        steps=r.step, epoch=r.epoch, tag_frequency=tag_frequency(r.samples, d.path),
        base_model_name=Path(r.preset.model.path).name, trigger_phrase=d.trigger,
        extra={"ss_seed": str(r.preset.training.seed), "ss_learning_rate": str(r.preset.optimizers["unet"].lr),
               "ss_v_parameterization": str(r.objective.name == "v_prediction")})


def resume_state(r: Run) -> dict:
    return {"step": r.step, "epoch": r.epoch, "cursor": r.cursor, "total_steps": r.total_steps,
            "samples": len(r.samples), "weights": ckpt.trained_weights(named_trainables(r)),
            "optim": r.optim.state_dict(), "rng": ckpt.rng_state(r.noise_gen),
            "ema": r.ema.state_dict() if r.ema else None}


def named_trainables(r: Run) -> dict:
    return {f"{comp}.{i}": m for comp, modules in r.trainables.items() for i, m in enumerate(modules)}


def render_samples(r: Run) -> None:
    """Sample images with the current weights (engine.sampling renders them); a sample event per image."""
    sampling = r.preset.sampling
    if not sampling.prompts:
        return
    from engine.sampling import sample_images

    r.status("sampling", f"Rendering {len(sampling.prompts)} prompt(s) at step {r.step}")
    size = (sampling.width_px or r.preset.dataset.resolution_px, sampling.height_px or r.preset.dataset.resolution_px)
    with whole_model_on_device(r), vae_in_pipeline_dtype(r), torch.no_grad():
        results = sample_images(
            r.family.pipeline(r.comps), sampling.prompts, sampling.negative_prompt, sampling.seed, sampling.steps,
            sampling.guidance_scale, size[0], size[1], sampling.strengths, r.run_dir / "samples", r.step,
            extra_info={"Model": Path(r.preset.model.path).name, "LoRA": r.preset.output.run_name},
            sampler=None if sampling.sampler == "default" else sampling.sampler)
    for result in results:
        r.emit("sample", **result)


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


def idle_modules(r: Run) -> list:
    """On a GPU, the VAE and frozen text encoders are idle once their caches are built: they wait in CPU RAM."""
    if r.device != "cuda":
        return []
    idle = [] if r.batches.latents is None else [r.comps.vae]
    return idle + (list(r.comps.text_encoders) if r.batches.text_cache is not None else [])


def park_idle(r: Run) -> None:
    if idle_modules(r):
        for module in idle_modules(r):
            module.to("cpu")
        torch.cuda.empty_cache()


@contextlib.contextmanager
def whole_model_on_device(r: Run):
    """Sampling and the LoRA self-check need every module on the device for a moment."""
    for module in idle_modules(r):
        module.to(r.device)
    try:
        yield
    finally:
        park_idle(r)


# --------------------------------------------------------------------------------------------------- setup

def setup(run_dir: Path, preset, events: EventWriter, resume: bool) -> Run:
    from engine.families import get_family

    quiet_libraries()
    training = preset.training
    device, mixed, weight_dtype = choose_precision(training, preset.network, events)
    events.emit("started", preset=preset_to_dict(preset), versions=versions(), device=device_name(device),
                resume=resume)
    warn_unsupported(preset, events)
    torch.manual_seed(training.seed)  # adapter init and dropout: the same seed gives the same run
    family = get_family(preset.model.family)
    events.emit("status", phase="loading", text=f"Loading the {family.name} model from {preset.model.path}",
                n=0, total=1)
    comps = family.load(preset.model, weight_dtype, device)
    events.emit("status", phase="loading", text="Model loaded", n=1, total=1)
    trainables = add_network(family, comps, preset.network, training.gradient_checkpointing)
    r = build_run(run_dir, preset, events, family, comps, trainables, device, mixed, weight_dtype)
    if resume:
        restore(r)
    return r


def quiet_libraries() -> None:
    """No download/loading progress bars in engine.log: progress goes to events as n/total."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def choose_precision(training, network, events) -> tuple[str, str, torch.dtype]:
    """(device, accelerate mixed_precision, dtype of the frozen weights). CPU trains in fp32."""
    if not torch.cuda.is_available():
        if training.precision != "fp32":
            events.emit("warning", message=f"No CUDA GPU found: training on the CPU in fp32 (training.precision "
                                           f"{training.precision} needs a GPU). This is slow except for tiny models.")
        return "cpu", "no", torch.float32
    if training.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("training.precision: bf16 is not supported by this GPU.",
                        "Use training.precision: fp16 (cards older than RTX 30xx).")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[training.precision]
    # a full fine-tune keeps fp32 master weights; a LoRA keeps the frozen base in the half type (half the VRAM)
    weight_dtype = torch.float32 if network.type == "full" else dtypes[training.precision]
    return "cuda", mixed, weight_dtype


def versions() -> dict:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__}


def device_name(device: str) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"cuda:0 {props.name} ({props.total_memory / 2**30:.0f} GB)"
    return f"cpu ({platform.processor() or platform.machine()})"


def warn_unsupported(preset, events) -> None:
    """Settings this engine does not act on yet: said plainly instead of silently ignored."""
    notes = []
    if preset.output.tensorboard:
        notes.append("output.tensorboard: TensorBoard logs are not written yet; the loss is in events.jsonl.")
    if preset.model.quantize_base != "none":
        notes.append(f"model.quantize_base: {preset.model.quantize_base} is only used for FLUX; ignored here.")
    for message in notes:
        events.emit("warning", message=message)


def add_network(family, comps, network, gradient_checkpointing: bool) -> dict:
    """Freeze the base, add LoRA adapters (or unfreeze the UNet for a full fine-tune); {component: [modules]}."""
    from engine.lora import add_lora

    for module in (comps.denoiser, comps.vae, *comps.text_encoders):
        module.requires_grad_(False)
    comps.vae.eval()
    if network.type == "full":
        comps.denoiser.requires_grad_(True)
        trainables = {"unet": [comps.denoiser]}
    else:
        targets = list(network.targets) or list(family.lora_targets)
        add_lora(comps.denoiser, network.rank, network.alpha, network.dropout, targets)
        trainables = {"unet": [comps.denoiser]}
        if network.train_text_encoder:
            for te in comps.text_encoders:
                add_lora(te, network.rank, network.alpha, network.dropout, list(family.te_lora_targets))
            trainables["text_encoder"] = list(comps.text_encoders)
        if network.init_from:
            load_initial_lora(family, comps, network)
    for modules in trainables.values():
        for module in modules:
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # fp32 trained weights: the optimizer's updates are too small for bf16
            module.train()
    if gradient_checkpointing:
        comps.denoiser.enable_gradient_checkpointing()
        if network.train_text_encoder:
            for te in comps.text_encoders:  # transformers 5 renamed it; keep working on both names
                if hasattr(te, "activation_checkpointing_enable"):
                    te.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return trainables


def load_initial_lora(family, comps, network) -> None:
    from engine.lora import load_lora_into, lora_file_info

    path = Path(network.init_from).expanduser()
    if not path.is_file():
        raise UserError(f"network.init_from: no such LoRA file: {path}", "Fix the path or leave it empty.")
    info = lora_file_info(path)
    if info.rank != network.rank:
        raise UserError(f"network.init_from: {path.name} has rank {info.rank} but network.rank is {network.rank}.",
                        f"Set network.rank: {info.rank} to continue training that LoRA.")
    tes = dict(zip(family.text_encoder_names, comps.text_encoders)) if network.train_text_encoder else {}
    load_lora_into(comps.denoiser, tes, path, text_encoder_names=family.text_encoder_names)


def build_run(run_dir, preset, events, family, comps, trainables, device, mixed, weight_dtype) -> Run:
    from engine.objectives import make_objective
    from engine.plan import batches_per_epoch, steps_per_epoch, total_steps

    training = preset.training
    from engine.cache import prepare_batches

    samples, batches = prepare_batches(preset.dataset, training, preset.network, family, comps, device,
                                       warn=lambda message: events.emit("warning", message=message),
                                       progress=lambda phase, text: lambda n, total: events.emit(
                                           "status", phase=phase, text=text, n=n, total=total))
    per_epoch = steps_per_epoch(batches_per_epoch(bucket_counts_of(samples), training.batch_size),
                                training.grad_accum)
    total = total_steps(training.max_steps, training.max_epochs, per_epoch)
    objective_name = training.objective if training.objective != "auto" else comps.prediction_type
    objective = make_objective(objective_name, comps.alphas_cumprod, training.timestep_sampling)
    accelerator = make_accelerator(mixed, device)
    optim = make_optimizer_set(preset, trainables, total, accelerator)
    params = [p for modules in trainables.values() for m in modules for p in m.parameters() if p.requires_grad]
    r = Run(run_dir=run_dir, preset=preset, events=events, family=family, comps=comps, objective=objective,
            trainables=trainables, params=params, optim=optim, accelerator=accelerator, batches=batches,
            samples=samples, noise_gen=torch.Generator(device=device).manual_seed(training.seed),
            total_steps=total, steps_per_epoch=per_epoch, device=device, weight_dtype=weight_dtype)
    r.cadence = ckpt.Cadence(preset.output)
    if training.ema.enabled:
        r.ema = ckpt.Ema(params, training.ema.decay)
    park_idle(r)
    return r


def bucket_counts_of(samples):
    from engine.data import bucket_counts

    return bucket_counts(samples)


def make_accelerator(mixed: str, device: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # several runs in one process (tests, the GUI's demo) each get their own
    return Accelerator(mixed_precision=mixed, cpu=device == "cpu")


def make_optimizer_set(preset, trainables: dict, total: int, accelerator):
    from engine.optim import build_optimizers
    from engine.schedules import two_phase_cutoff

    params = {comp: [p for m in modules for p in m.parameters() if p.requires_grad]
              for comp, modules in trainables.items()}
    optim = build_optimizers(preset.optimizers, preset.schedules, params, total_steps=total,
                             te_lr_ratio=preset.network.te_lr_ratio,
                             te_train_steps=two_phase_cutoff(preset.network, total))
    # accelerate handles the fp16 loss scale through its wrapped optimizers
    optim.optimizers = {c: accelerator.prepare_optimizer(o) for c, o in optim.optimizers.items()}
    return optim


def restore(r: Run) -> None:
    """Continue at the saved step: weights, optimizer + schedule, RNG and data position."""
    state = ckpt.load_state(r.run_dir / "state")
    if state["samples"] != len(r.samples):
        r.emit("warning", message=f"The dataset changed since the run stopped ({state['samples']} -> "
                                  f"{len(r.samples)} images): the data order after resuming differs.")
    ckpt.restore_weights(named_trainables(r), state["weights"])
    r.optim.load_state_dict(state["optim"])
    ckpt.restore_rng(state["rng"], r.noise_gen)
    if r.ema is not None and state.get("ema") is not None:
        r.ema.load_state_dict(state["ema"])
    r.step, r.epoch, r.cursor = state["step"], state["epoch"], state["cursor"]
    freeze_finished_components(r)
    r.status("resuming", f"Resuming at step {r.step} of {r.total_steps} (epoch {r.epoch + 1})")


def main(argv=None) -> int:
    """`python -m engine.train RUN_DIR [--resume]` (the GUI and tests use engine.cli; this is for debugging)."""
    argv = sys.argv[1:] if argv is None else argv
    return run(Path(argv[0]), resume="--resume" in argv)


if __name__ == "__main__":
    sys.exit(main())
