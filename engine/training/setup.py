"""Setting up a run: the Run record the loop works on, and setup(), which fills it.

setup() reads top to bottom: quiet the libraries, choose device and precision, say `started`, load the family's
model, add the network (LoRA adapters or a full fine-tune), cache the dataset, then build the objective, the
accelerator and the optimizer set. On resume, restore() puts back the weights, optimizer, RNG and data position.
engine/training/loop.py runs the loop on the result.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.config.save import preset_to_dict
from engine.events import EventWriter
from engine.failures import UserError
from engine.training import checkpoints as ckpt


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
    optim: object             # engine.training.optimizers.OptimizerSet
    accelerator: object
    batches: object           # engine.data.cache.BatchSource
    samples: list
    noise_gen: torch.Generator
    total_steps: int
    device: str
    weight_dtype: torch.dtype
    step: int = 0
    epoch: int = 0            # epochs completed
    cursor: int = 0           # batches of the current epoch already trained
    s_per_it: float = 0.0
    cadence: object = None
    ema: object = None        # checkpoints.Ema when training.ema.enabled
    trained_names: dict = field(default_factory=dict)  # named_trainables key -> the names of its trained params
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


# --------------------------------------------------------------------------------------------------- setup

def setup(run_dir: Path, preset, events: EventWriter, resume: bool) -> Run:
    from engine.models.families import get_family
    from engine.models.families.detect import check_family

    quiet_libraries()
    training = preset.training
    device, mixed, weight_dtype = choose_precision(training, preset.network, events)
    events.emit("started", preset=preset_to_dict(preset), versions=versions(), device=device_name(device),
                resume=resume)
    warn_unsupported(preset, events)
    torch.manual_seed(training.seed)  # adapter init and dropout: the same seed gives the same run
    family = get_family(preset.model.family)
    check_family(family.name, preset.model.path)
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
        notes.append(f"model.quantize_base: {preset.model.quantize_base} base weights are not implemented yet; "
                     f"the base model loads unquantized.")
    for comp, opt in preset.optimizers.items():  # legal (re-saving a LoRA unchanged), but rarely what was meant
        if opt.lr == 0 and (comp == "unet" or preset.network.train_text_encoder):
            notes.append(f"optimizers.{comp}.lr is 0: this run will not change the {comp} at all "
                         f"(1e-4 is the usual LoRA learning rate).")
    for message in notes:
        events.emit("warning", message=message)


def add_network(family, comps, network, gradient_checkpointing: bool) -> dict:
    """Freeze the base, add LoRA adapters (or unfreeze the UNet for a full fine-tune); {component: [modules]}."""
    from engine.models.lora import add_lora

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
    from engine.models.lora import load_lora_into, lora_file_info

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
    from engine.data.cache import prepare_batches
    from engine.data.plan import batches_per_epoch, steps_per_epoch, total_steps
    from engine.data.samples import bucket_counts
    from engine.training.objectives import make_objective

    training = preset.training
    warning = check_disk_before_run(run_dir, preset, comps, trainables)
    if warning:
        events.emit("warning", message=warning)
    samples, batches = prepare_batches(preset.dataset, training, preset.network, family, comps, device,
                                       warn=lambda message: events.emit("warning", message=message),
                                       progress=lambda phase, text: lambda n, total: events.emit(
                                           "status", phase=phase, text=text, n=n, total=total))
    per_epoch = steps_per_epoch(batches_per_epoch(bucket_counts(samples), training.batch_size),
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
            total_steps=total, device=device, weight_dtype=weight_dtype)
    r.cadence = ckpt.Cadence(preset.output)
    r.trained_names = ckpt.trainable_names(named_trainables(r))
    if training.ema.enabled:
        r.ema = ckpt.Ema(params, training.ema.decay)
    park_idle(r)
    return r


def check_disk_before_run(run_dir: Path, preset, comps, trainables: dict) -> str | None:
    """Refuse a run whose saves cannot fit the drive, before caching and training write anything; a warning
    (returned) when only the latent cache does not fit."""
    from engine.data.cache import cache_dir_for
    from engine.data.layout import find_items
    from engine.data.plan import total_steps
    from engine.training.disk_space import check_free_space, estimate

    trained = sum(p.numel() for modules in trainables.values() for m in modules for p in m.parameters()
                  if p.requires_grad)
    everything = sum(p.numel() for m in (comps.denoiser, comps.vae, *comps.text_encoders) for p in m.parameters())
    d, t = preset.dataset, preset.training
    images = len(find_items(Path(d.path).expanduser(), d.caption_ext)) if Path(d.path).expanduser().is_dir() else 0
    # max_epochs runs: about one save per epoch is the most that cadence gives for the estimate
    steps = total_steps(t.max_steps, t.max_epochs, max(1, images // max(1, t.batch_size * t.grad_accum)))
    need = estimate(trained, everything, preset.network, preset.output, steps, images, d.resolution_px,
                    t.cache_latents)  # buckets keep about the resolution's pixel count
    return check_free_space(run_dir, cache_dir_for(d.path), need)


def make_accelerator(mixed: str, device: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # several runs in one process (tests, the GUI's demo) each get their own
    return Accelerator(mixed_precision=mixed, cpu=device == "cpu")


def make_optimizer_set(preset, trainables: dict, total: int, accelerator):
    from engine.training.optimizers import build_optimizers
    from engine.training.schedules import two_phase_cutoff

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
    check_same_network(state.get("network"), r.preset.network, r.run_dir)
    if state["samples"] != len(r.samples):
        r.emit("warning", message=f"The dataset changed since the run stopped ({state['samples']} -> "
                                  f"{len(r.samples)} images): the data order after resuming differs.")
    ckpt.restore_weights(named_trainables(r), state["weights"])
    r.optim.load_state_dict(state["optim"], preserve_lr=r.preset.training.preserve_lr)
    for message in r.optim.warnings:  # e.g. a new optimizer type in the edited preset starts with fresh state
        r.emit("warning", message=message)
    ckpt.restore_rng(state["rng"], r.noise_gen)
    if r.ema is not None and state.get("ema") is not None:
        r.ema.load_state_dict(state["ema"])
    r.step, r.epoch, r.cursor = state["step"], state["epoch"], state["cursor"]
    r.started_at = state.get("started_at", r.started_at)
    freeze_finished_components(r)
    r.status("resuming", f"Resuming at step {r.step} of {r.total_steps} (epoch {r.epoch + 1})")


def network_shape(network) -> dict:
    """What the saved weights' shapes depend on (kept in the resume state): a resume with other values cannot
    load them."""
    return {"type": network.type, "rank": network.rank, "train_text_encoder": network.train_text_encoder,
            "targets": list(network.targets)}


def check_same_network(saved: dict | None, network, run_dir: Path) -> None:
    """A resume whose preset.yaml changed the network's shape: say which setting, and the two ways on."""
    if not saved:
        return  # a state from before Easel recorded it: restore_weights still refuses a mismatch
    now = network_shape(network)
    changed = [key for key in saved if saved[key] != now.get(key)]
    if not changed:
        return
    key = changed[0]
    files = sorted((run_dir / "checkpoints").glob("*.safetensors")) + sorted(run_dir.glob("*.safetensors"))
    example = f" (e.g. {files[-1]})" if files else " (a .safetensors file of its checkpoints/ folder)"
    raise UserError(f"network.{key}: the run was trained with {key} {saved[key]!r}, and its preset.yaml now says "
                    f"{now[key]!r}: the saved weights do not fit.",
                    f"Put network.{key}: {saved[key]!r} back to resume; or start a new run, and to continue from "
                    f"this run's LoRA set network.init_from to one of its files{example}.")


# ------------------------------------------------------------------------------------ shared with the loop

def freeze_finished_components(r: Run) -> None:
    """Two-phase text-encoder training: once its phase is over, its adapter stops training."""
    for comp, modules in r.trainables.items():
        if comp in r.optim.optimizers and not r.optim.trainable(comp):
            for module in modules:
                for p in module.parameters():
                    p.requires_grad_(False)


def named_trainables(r: Run) -> dict:
    return {f"{comp}.{i}": m for comp, modules in r.trainables.items() for i, m in enumerate(modules)}


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
