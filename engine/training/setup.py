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
from engine.config.validate import advice, needs_dataset
from engine.events import EventWriter
from engine.failures import UserError
from engine.models.base_storage import check_quantize_supported
from engine.models.families.sd.unet_flow import use_flow_sampler
from engine.training import checkpoints as ckpt
from engine.training.speed import CompileTimer, compile_repeated_blocks, enable_tf32, prefer_channels_last


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
    compile_timer: object = None  # speed.CompileTimer when training.compile compiled something
    best: object = None       # validation.Best when there is a validation split
    processes: object = None  # distributed.Processes: this process among the run's (one GPU: rank 0 of 1)
    resume: object = False    # what setup() resumed from: True (the latest state) or a checkpoint's state file
    mode: object = None       # a training mode other than the denoiser's (vae_mode.VAE_MODE), or None
    step_extras: dict = field(default_factory=dict)  # a mode's loss terms of the last step, for its step event
    # reflow (engine/training/reflow.py): the steps before it, the iteration being trained; the dataset's samples
    # and batches while r.samples / r.batches are an iteration's pairs
    main_steps: int | None = None
    reflow_iteration: int | None = None
    dataset_samples: list = field(default_factory=list)
    dataset_batches: object = None
    trained_names: dict = field(default_factory=dict)  # named_trainables key -> the names of its trained params
    # a later phase's own state (engine/rl's trainer): saved in the resume state through its state_dict()
    phase_state: dict = field(default_factory=dict)
    score_samples: object = None  # (sample results) -> None, adding a "reward" to each (training.mode rl)
    started_at: float = field(default_factory=time.time)  # when training began (kept across resumes)
    _epoch_cache: dict = field(default_factory=dict)

    @property
    def phase_end(self) -> int:
        """The step where the phase being trained ends: the main training's last, or the reflow iteration's."""
        from engine.data.plan import reflow_steps_per_iteration

        if self.main_steps is None:
            return self.total_steps
        if self.reflow_iteration is None:
            return self.main_steps
        per_iteration = reflow_steps_per_iteration(self.preset.training, self.processes.world)
        return self.main_steps + (self.reflow_iteration + 1) * per_iteration

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
    """The denoiser's run (training.mode denoiser); engine/training/vae_mode.py's setup_vae is the VAE's."""
    from engine.models.families.detect import check_family

    training = preset.training
    processes, device, mixed, weight_dtype, family = begin(preset, events, resume)
    check_family(family.name, preset.model.path)
    check_quantize_supported(preset.model.quantize_base, device)
    events.emit("status", phase="loading", text=f"Loading the {family.name} model from {preset.model.path}",
                n=0, total=1)
    comps = family.load(preset.model, weight_dtype, device,
                        progress=lambda text, n, total: events.emit("status", phase="loading", text=text, n=n,
                                                                    total=total))
    events.emit("status", phase="loading", text="Model loaded", n=1, total=1)
    configure_for_training(comps, training, family)
    trainables = add_network(family, comps, preset.network, training.gradient_checkpointing)
    if preset.network.type == "lora" and preset.network.init_from:
        for message in load_initial_lora(family, comps, preset.network):
            events.emit("warning", message=message)
    store_base(comps, preset.model, weight_dtype, events)
    r = build_run(run_dir, preset, events, family, comps, trainables, device, mixed, weight_dtype, processes)
    if resume:
        r.resume = resume
        restore(r)
    return r


def begin(preset, events: EventWriter, resume) -> tuple:
    """What every mode starts with: quiet libraries, the other GPUs' processes, device and precision, the `started`
    event, the seed; (processes, device, mixed precision, frozen weights' dtype, family)."""
    from engine.models.families import get_family
    from engine.sampling.prompts import read_prompts_file
    from engine.training.distributed import start

    quiet_libraries()
    training = preset.training
    read_prompts_file(preset.sampling.eval_prompts_file)  # a wrong path fails now, not after the whole run
    processes = start()  # with several GPUs: joins the other processes and picks this one's GPU
    family = get_family(preset.model.family)
    device, mixed, weight_dtype = choose_precision(training, preset.network, events, family.caps.default_precision)
    events.emit("started", preset=preset_to_dict(preset), versions=versions(), device=device_name(device),
                resume=resume, processes=processes.world,
                effective_batch=training.batch_size * training.grad_accum * processes.world,
                **plateau_note(preset))
    warn_unsupported(preset, events)
    torch.manual_seed(training.seed)  # adapter init and dropout: the same seed gives the same run
    return processes, device, mixed, weight_dtype, family


def quiet_libraries() -> None:
    """No download/loading progress bars in engine.log: progress goes to events as n/total."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def choose_precision(training, network, events, default_precision: str = "auto") -> tuple[str, str, torch.dtype]:
    """(device, accelerate mixed_precision, dtype of the frozen weights). CPU trains in fp32; `auto` picks the
    family's default_precision (its Capabilities), which is itself auto (bf16 where the GPU has it, else fp16) for
    most."""
    if not torch.cuda.is_available():
        if training.precision not in ("fp32", "auto"):
            events.emit("warning", message=f"No CUDA GPU found: training on the CPU in fp32 (training.precision "
                                           f"{training.precision} needs a GPU). This is slow except for tiny models.")
        return "cpu", "no", torch.float32
    enable_tf32()
    precision = resolved_precision(training.precision, native_bf16(), default_precision)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("training.precision: bf16 is not supported by this GPU.",
                        "Use training.precision: fp16 (cards older than RTX 30xx).")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    # a full fine-tune keeps fp32 master weights; a LoRA keeps the frozen base in the half type (half the VRAM)
    weight_dtype = torch.float32 if network.type == "full" else dtypes[precision]
    if training.precision == "auto":
        events.emit("status", phase="precision", text=f"Precision auto: {precision} on this GPU.")
    return "cuda", mixed, weight_dtype


def resolved_precision(precision: str, bf16_native: bool, default_precision: str = "auto") -> str:
    """training.precision on a GPU: `auto` is the family's default_precision; when that is auto too, bf16 where the
    card has it natively (RTX 30xx and newer), else fp16. FLUX's is bf16: its activations overflow fp16 (an older
    card emulates bf16, slowly but correctly)."""
    if precision != "auto":
        return precision
    if default_precision != "auto":
        return default_precision
    return "bf16" if bf16_native else "fp16"


def native_bf16() -> bool:
    """bf16 in hardware (compute capability 8.0+): torch.cuda.is_bf16_supported() also says yes where it is only
    emulated, which is several times slower than fp16 there."""
    return torch.cuda.get_device_capability()[0] >= 8


def versions() -> dict:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__}


def device_name(device: str) -> str:
    if device == "cuda":
        index = torch.cuda.current_device()  # with several GPUs, the main process's
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} {props.name} ({props.total_memory / 2**30:.0f} GB)"
    return f"cpu ({platform.processor() or platform.machine()})"


def warn_unsupported(preset, events) -> None:
    """Settings that are valid but rarely what was meant (engine.config.validate.advice): said plainly."""
    for key, message in advice(preset):
        events.emit("warning", message=f"{key}: {message}")


def configure_for_training(comps, training, family=None) -> None:
    """Training settings a family's predict/encode_text read (FLUX: the guidance value, the T5 length; the DiT:
    its objective and DDPM schedule)."""
    if family is not None and family.configure is not None:
        family.configure(comps, training)
    if "guidance_scale" in comps.extra:
        comps.extra["guidance_scale"] = training.guidance_scale
    if "max_sequence_length" in comps.extra and training.max_sequence_length:
        comps.extra["max_sequence_length"] = training.max_sequence_length


def store_base(comps, model_cfg, compute_dtype, events) -> None:
    """model.quantize_base fp8: the frozen denoiser weights in float8 from here on (int8/nf4 happened at loading)."""
    from engine.models.base_storage import store_in_fp8

    if model_cfg.quantize_base != "fp8" or getattr(comps.denoiser, "easel_fp8", False):  # FLUX: done while loading
        return
    saved = store_in_fp8(comps.denoiser, compute_dtype, progress=lambda n, total: events.emit(
        "status", phase="loading", text="Storing the base weights in fp8", n=n, total=total))
    amount = f"{saved / 2**30:.2f} GB" if saved >= 2**30 else f"{saved / 2**20:.1f} MB"
    events.emit("status", phase="loading", text=f"Base weights in fp8: {amount} saved", n=1, total=1)


def add_network(family, comps, network, gradient_checkpointing: bool) -> dict:
    """Freeze the base, add LoRA adapters (or unfreeze the UNet for a full fine-tune); {component: [modules]}."""
    from engine.models.lora import add_lora

    for module in (comps.denoiser, comps.vae, *comps.text_encoders):
        module.requires_grad_(False)
    comps.vae.eval()
    if network.type not in family.caps.network_types:
        raise UserError(f"network.type: {network.type} cannot train family '{family.name}'"
                        f"{'' if family.caps.base_model else ': a DiT trained from scratch has no base model to adapt'}.",
                        f"Set network.type: {' or '.join(family.caps.network_types)}.")
    if network.type == "full":
        comps.denoiser.requires_grad_(True)
        trainables = {"unet": [comps.denoiser]}
    else:
        if family.lora_target_names is not None:
            targets = family.lora_target_names(comps.denoiser, network)
        else:
            targets = list(network.targets) or list(family.lora_targets)
        if not targets:
            raise UserError(f"network.targets: {', '.join(network.targets)} match no layer of the {family.name} model.",
                            "Leave network.targets empty for the family's default layers, or use module names "
                            "such as to_q, to_k, to_v, to_out.0.")
        add_lora(comps.denoiser, network.rank, network.alpha, network.dropout, targets)
        trainables = {"unet": [comps.denoiser]}
        if network.train_text_encoder:
            for te in trainable_text_encoders(family, comps):
                add_lora(te, network.rank, network.alpha, network.dropout, list(family.te_lora_targets))
            trainables["text_encoder"] = trainable_text_encoders(family, comps)
    for modules in trainables.values():
        for module in modules:
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # fp32 trained weights: the optimizer's updates are too small for bf16
            module.train()
    if gradient_checkpointing:
        comps.denoiser.enable_gradient_checkpointing()
        if network.train_text_encoder:
            for te in trainable_text_encoders(family, comps):  # transformers 5 renamed it; keep working on both names
                if hasattr(te, "activation_checkpointing_enable"):
                    te.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return trainables


def trainable_text_encoders(family, comps) -> list:
    """The text encoders a LoRA may train (FLUX: CLIP-L only; T5 is always frozen)."""
    return list(comps.text_encoders[:family.caps.trainable_text_encoders])


def load_initial_lora(family, comps, network) -> list[str]:
    """Continue from network.init_from; returns what the user should know (as warnings).

    A file with a text-encoder part loaded into a run that does not train the text encoder (the FLUX guide's phase 2:
    ENABLE_TE=0 RESUME_FROM=phase1.safetensors) keeps that part: it is loaded into a frozen adapter, so the samples
    use it and every file this run writes carries it."""
    from engine.models.lora import add_lora, load_lora_into, lora_file_components, lora_file_info

    path = Path(network.init_from).expanduser()
    if not path.is_file():
        raise UserError(f"network.init_from: no such LoRA file: {path}", "Fix the path or leave it empty.")
    info = lora_file_info(path)
    if info.rank != network.rank:
        raise UserError(f"network.init_from: {path.name} has rank {info.rank} but network.rank is {network.rank}.",
                        f"Set network.rank: {info.rank} to continue training that LoRA.")
    notes = []
    in_file = lora_file_components(path)
    tes = {name: te for name, te in zip(family.text_encoder_names, trainable_text_encoders(family, comps))
           if name in in_file}
    carried = bool(tes) and not network.train_text_encoder
    if carried:
        for te in tes.values():
            add_lora(te, info.rank, info.alpha, 0.0, list(family.te_lora_targets))
        notes.append(f"{path.name} has a text-encoder LoRA and this run does not train the text encoder: it is "
                     f"loaded frozen and carried into this run's files.")
    load_lora_into(comps.denoiser, tes, path, text_encoder_names=family.text_encoder_names)
    if carried:
        for te in tes.values():
            te.requires_grad_(False)
    trained_on = info.metadata.get("modelspec.architecture", "")
    variant = comps.extra.get("variant")
    if variant and "flux-1-" in trained_on and f"flux-1-{variant}" not in trained_on:
        other = "schnell" if variant == "dev" else "dev"
        notes.append(f"network.init_from: {path.name} was trained on FLUX.1-{other}, and this model is FLUX.1-{variant}: "
                     f"the LoRA loads, but its look will differ (schnell is distilled for 4 steps, dev for guidance).")
    return notes


def build_run(run_dir, preset, events, family, comps, trainables, device, mixed, weight_dtype,
              processes=None) -> Run:
    """processes: distributed.Processes of a multi-GPU run; None for one process (the benches build runs so)."""
    from engine.data.cache import prepare_batches
    from engine.data.plan import batches_per_epoch, steps_per_epoch, total_reflow_steps, total_steps
    from engine.data.samples import bucket_counts
    from engine.training.distributed import Processes
    from engine.training.objectives import make_objective

    processes = processes or Processes()
    training = preset.training
    warning = check_disk_before_run(run_dir, preset, comps, trainables) if processes.is_main else None
    if warning:
        events.emit("warning", message=warning)
    v = preset.validation
    if needs_dataset(preset):
        with processes.main_first():  # the main process writes the caches, the others read them
            samples, batches = prepare_batches(preset.dataset, training, preset.network, family, comps, device,
                                               warn=lambda message: events.emit("warning", message=message),
                                               progress=lambda phase, text: lambda n, total: events.emit(
                                                   "status", phase=phase, text=text, n=n, total=total),
                                               validation=v if (v.folder or v.fraction > 0) else None)
    else:  # RL from the first step on a prompts file: nothing to cache
        from engine.data.cache import text_only_source

        samples, batches = [], text_only_source(preset.dataset, training.seed, family, comps, device)
    status = lambda phase, text, **progress: events.emit("status", phase=phase, text=text, **progress)  # noqa: E731
    encode_sample_prompts(family, comps, preset.sampling, batches, status)
    park(idle_parts(comps, batches, device))
    place_denoiser(comps, device, preset.model.block_swap, training, status)
    accelerator = make_accelerator(mixed, device, fresh=processes.world == 1)
    if training.auto_batch_size and processes.world > 1:
        events.emit("warning", message=f"training.auto_batch_size measures one GPU; with {processes.world} GPUs "
                                       f"each process trains training.batch_size {training.batch_size} images.")
    elif training.auto_batch_size:
        preset = choose_batch_size(run_dir, preset, family, comps, batches, samples, device, weight_dtype,
                                   accelerator, events)
        training = preset.training
    per_epoch = steps_per_epoch(batches_per_epoch(bucket_counts(samples), training.batch_size),
                                training.grad_accum * processes.world) if samples else 0
    main = total_steps(training.max_steps, training.max_epochs, per_epoch)
    total = main + total_reflow_steps(training, processes.world)  # the LR schedule spans the reflow too
    if training.mode == "rl":  # the supervised warmup is the main phase; RL (engine/rl) takes the rest
        main, total = min(preset.rl.warmup_steps, training.max_steps), training.max_steps
    objective_name = training.objective if training.objective != "auto" else comps.prediction_type
    objective = make_objective(objective_name, comps.alphas_cumprod, training.timestep_sampling,
                               training.sigmoid_scale, training.discrete_flow_shift, flow_path=training.flow_path)
    if "objective" in comps.extra:  # the DiT's timestep depends on it (t * 1000 for flow, the DDPM step k)
        comps.extra["objective"] = objective
    check_rectified_flow(objective_name, comps.prediction_type, preset.model)
    # a UNet trained as a flow (FLUX and the DiT are flow models already)
    if objective_name == "flow" and comps.prediction_type != "flow" and family.caps.base_model and \
            use_flow_sampler(family.pipeline(comps)):
        comps.extra["rectified_flow"] = True  # saves add a how-to-sample note (engine/models/families/sd/unet_flow.py)
        events.emit("status", phase="loading", text="Rectified flow: the samples and the saved model use flow Euler "
                                                    "on the straight path")
    optim = make_optimizer_set(preset, trainables, total, accelerator)
    params = [p for modules in trainables.values() for m in modules for p in m.parameters() if p.requires_grad]
    r = Run(run_dir=run_dir, preset=preset, events=events, family=family, comps=comps, objective=objective,
            trainables=trainables, params=params, optim=optim, accelerator=accelerator, batches=batches,
            # each GPU draws its own noise; one GPU draws what it always did
            samples=samples, noise_gen=torch.Generator(device=device).manual_seed(training.seed + processes.rank),
            total_steps=total, device=device, weight_dtype=weight_dtype, processes=processes)
    processes.wrap(trainables, device, training.grad_accum)
    r.main_steps = main
    r.dataset_samples, r.dataset_batches = samples, batches
    if training.reflow_steps and objective.name != "flow":
        raise UserError(f"training.reflow_steps: reflow straightens a flow, and this run trains {objective.name}.",
                        "Set training.objective: flow (on a v-prediction base), or training.reflow_steps: 0.")
    r.cadence = ckpt.Cadence(preset.output)
    r.trained_names = ckpt.trainable_names(named_trainables(r))
    if training.ema.enabled:
        r.ema = ckpt.Ema(params, training.ema.decay, training.ema.update_interval)
        warning = ema_too_slow(training.ema, total)
        if warning:
            events.emit("warning", message=warning)
    if batches.val_indices:
        from engine.training.validation import Best

        r.best = Best(run_dir / "checkpoints" / "best", preset.validation.keep_best)
        r.status("loading", f"Validation: {len(batches.val_indices)} held-out image(s), {len(samples)} to train on")
    if training.compile and r.comps.extra.get("compiled"):
        r.compile_timer = CompileTimer(lambda seconds: r.status(
            "training", f"torch.compile: {seconds:.0f} s one-off compile time in the first step"))
    return r


def ema_too_slow(ema, total: int) -> str | None:
    """The EMA averages over about 1 / (1 - decay) updates; past a third of the run the samples and files (which
    show the EMA) show little of the training."""
    span = ema.update_interval / max(1e-12, 1 - ema.decay)
    if span <= total / 3:
        return None
    return (f"training.ema.decay {ema.decay:g} averages over ~{span:,.0f} steps, more than a third of this run's "
            f"{total}: the samples and saved files (the EMA) will show little of the training. Lower it (e.g. "
            f"{max(0.9, 1 - 3 * ema.update_interval / max(total, 1)):.3g}), or train longer.")


def check_rectified_flow(objective: str, prediction_type: str, model_cfg) -> None:
    """training.objective flow on a UNet needs a v-prediction base (EveryDream2's --rectified_flow check), read from
    the model's scheduler config (or model.prediction_type), not from its family: there are v-prediction SDXL models
    and epsilon SD2 ones."""
    if objective != "flow" or prediction_type in ("flow", "v_prediction"):
        return
    raise UserError(f"training.objective: flow (rectified flow) needs a v-prediction base model, and "
                    f"{Path(model_cfg.path).name or model_cfg.path} predicts {prediction_type} (its scheduler config"
                    f"{' and model.prediction_type say' if model_cfg.prediction_type != 'auto' else ' says'} so).",
                    "Use a v-prediction model (SD 2.x 768-v, e.g. stable-diffusion-2-1), or train this one with "
                    "training.objective: auto. If the model is v-prediction and its config is wrong, set "
                    "model.prediction_type: v_prediction.")


def encode_sample_prompts(family, comps, sampling, batches, status) -> None:
    """FLUX: the sample prompts encoded now, while the frozen text encoders are still on the GPU, so sampling
    never brings them back (Family.cached_sample_prompts)."""
    from engine.data.cache import cache_text
    from engine.sampling.prompts import read_prompts_file

    if not family.cached_sample_prompts or batches.text_cache is None:
        return
    prompts = list(sampling.prompts) + read_prompts_file(sampling.eval_prompts_file)
    if prompts:  # cached on disk like the captions: a second run never moves the text encoders to the GPU
        comps.extra["prompt_cond"] = cache_text(prompts, batches.encode_text,
                                                lambda n, total: status("caching", "Encoding the sample prompts",
                                                                        n=n, total=total),
                                                cache_dir=batches.text_cache_dir, encoder_id=batches.encoder_id)


def place_denoiser(comps, device: str, block_swap: int, training, status) -> None:
    """The denoiser onto the device once the caches are built and the idle parts are parked; with block swap, the
    swapped blocks' frozen weights stay in CPU RAM (engine/models/block_swap.py). Then the GPU speed-ups that
    cost no quality (engine/training/speed.py) and, when asked, torch.compile."""
    from engine.models.block_swap import move_except_swapped, swap_blocks

    swap = swap_blocks(comps.denoiser, block_swap, device) if block_swap else None
    move_except_swapped(comps.denoiser, device, swap)
    comps.extra["block_swap"] = swap
    if swap is not None:
        status("loading", f"Block swap: {len(swap.blocks)} transformer blocks wait in CPU RAM between uses")
    if device == "cuda":
        prefer_channels_last(comps.denoiser)
    if training.compile:
        comps.extra["compiled"] = compile_repeated_blocks(comps.denoiser)
        if not comps.extra["compiled"]:
            status("loading", "training.compile: this model has no repeated blocks to compile; it runs as is")


def choose_batch_size(run_dir, preset, family, comps, batches, samples, device, weight_dtype, accelerator, events):
    """training.auto_batch_size: probe the largest batch that fits the GPU at the largest bucket, write it into the
    run's preset.yaml (so a resume trains the same batches) and return the preset with it."""
    import dataclasses

    from engine.config.save import save_preset

    if device != "cuda":
        events.emit("warning", message=f"training.auto_batch_size needs a CUDA GPU to measure; training with "
                                       f"training.batch_size {preset.training.batch_size}.")
        return preset
    largest = max(range(len(samples)), key=lambda i: samples[i].bucket[0] * samples[i].bucket[1])
    free, _ = torch.cuda.mem_get_info()
    limit = free + torch.cuda.memory_allocated()
    trained = [p for p in comps.denoiser.parameters() if p.requires_grad]
    optimizer_state = 2 * sum(p.numel() * 4 for p in trained)  # AdamW's two fp32 moments, not yet allocated

    def try_batch(n: int) -> int:
        torch.cuda.reset_peak_memory_stats()
        with accelerator.autocast():
            batch = batches([largest] * n, 0, 0)
            x = batch["latents"].to(device, weight_dtype)
            pred = family.predict(comps, x, torch.full((n,), 0.5, device=device), batch["cond"], batch["size_cond"])
        accelerator.backward(pred.float().square().mean())
        for p in trained:
            p.grad = None
        return torch.cuda.max_memory_allocated() + optimizer_state

    from engine.training.speed import largest_fitting_batch

    n, peak = largest_fitting_batch(try_batch, limit)
    if n == 0:
        raise torch.cuda.OutOfMemoryError("not even a batch of 1 fits at the largest bucket")
    training = dataclasses.replace(preset.training, batch_size=n, auto_batch_size=False)
    preset = dataclasses.replace(preset, training=training)
    save_preset(preset, run_dir / "preset.yaml")
    events.emit("status", phase="loading", text=f"Auto batch size: {n} (peak {peak / 2**30:.1f} of "
                                                f"{limit / 2**30:.1f} GB at {samples[largest].bucket[0]}x"
                                                f"{samples[largest].bucket[1]} px); written into preset.yaml",
                n=1, total=1, batch_size=n)
    return preset


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


def restore(r: Run) -> None:
    """Continue at the saved step: weights, optimizer + schedule, RNG and data position."""
    state = ckpt.load_state(ckpt.state_file(r.run_dir, r.resume))
    check_same_network(state.get("network"), r.preset.network, r.run_dir)
    r.reflow_iteration = state.get("reflow_iteration")
    if state["samples"] != len(r.samples):
        r.emit("warning", message=f"The dataset changed since the run stopped ({state['samples']} -> "
                                  f"{len(r.samples)} images): the data order after resuming differs.")
    ckpt.restore_weights(named_trainables(r), state["weights"])
    r.optim.load_state_dict(state["optim"], preserve_lr=r.preset.training.preserve_lr)
    for message in r.optim.warnings:  # e.g. a new optimizer type in the edited preset starts with fresh state
        r.emit("warning", message=message)
    restore_random_state(r, state)
    if r.ema is not None and state.get("ema") is not None:
        r.ema.load_state_dict(state["ema"])
    if r.best is not None:
        r.best.load_state_dict(state.get("best"))
    r.step, r.epoch, r.cursor = state["step"], state["epoch"], state["cursor"]
    r.phase_state = dict(state.get("phase_state") or {})
    r.started_at = state.get("started_at", r.started_at)
    freeze_finished_components(r)
    r.status("resuming", f"Resuming at step {r.step} of {r.total_steps} (epoch {r.epoch + 1})")


def restore_random_state(r: Run, state: dict) -> None:
    """This process's saved random state; a multi-GPU run resumed on another number of GPUs keeps the data
    position, the others start new noise streams."""
    saved = state.get("rng_processes") or [state["rng"]]
    world = r.processes.world
    if len(saved) != world:
        r.emit("warning", message=f"The run was trained on {len(saved)} GPU(s) and resumes on {world}: it continues "
                                  f"at the same step and data position, with new random noise for each GPU.")
    if r.processes.rank < len(saved):
        ckpt.restore_rng(saved[r.processes.rank], r.noise_gen)


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
    return idle_parts(r.comps, r.batches, r.device)


def idle_parts(comps, batches, device: str) -> list:
    """On a GPU, the VAE and frozen text encoders are idle once their caches are built: they wait in CPU RAM."""
    if device != "cuda":
        return []
    idle = [] if batches.latents is None else [comps.vae]
    return idle + (list(comps.text_encoders) if batches.text_cache is not None else [])


def park_idle(r: Run) -> None:
    park(idle_modules(r))


def park(modules: list) -> None:
    if modules:
        for module in modules:
            module.to("cpu")
        torch.cuda.empty_cache()
