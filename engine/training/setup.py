"""Setting up a denoiser's run: setup() fills the Run record (run_state.py) that the loop trains.

setup() reads top to bottom: quiet the libraries, choose device and precision (precision.py), say `started`, load the
family's model, add the network (network.py: LoRA adapters or a full fine-tune), store the base in fp8 when asked,
then build_run(): check the disk (disk_space.py), cache the dataset, park the idle parts and place the denoiser
(placement.py), the accelerator, the batch size (batch_size.py) and the steps of the mode's phases, the objective,
the optimizer set (optimizer_setup.py), EMA and validation. On resume, restore() (resume.py) puts back the weights,
optimizer, RNG and data position. engine/training/modes/ chooses this set-up by the preset; loop.py trains.
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from engine.config.save import preset_to_dict
from engine.config.validate import advice, needs_dataset
from engine.events import EventWriter
from engine.failures import UserError
from engine.models.base_storage import check_quantize_supported
from engine.models.unet_flow import use_flow_sampler
from engine.training import checkpoints as ckpt
from engine.training.batch_size import choose_batch_size
from engine.training.disk_space import check_disk_before_run
from engine.training.modes.denoiser import DENOISER
from engine.training.network import add_network, load_initial_lora
from engine.training.optimizer_setup import make_accelerator, make_optimizer_set, plateau_note
from engine.training.placement import encode_sample_prompts, idle_parts, park, place_denoiser
from engine.training.precision import choose_precision
from engine.training.resume import restore
from engine.training.run_state import Run, named_trainables
from engine.training.speed import CompileTimer


def setup(run_dir: Path, preset, events: EventWriter, resume: bool, phase_steps=None) -> Run:
    """The denoiser's run (training.mode denoiser; RL's and reflow's too, with their phase_steps: see build_run);
    engine/training/modes/vae.py's setup_vae is the VAE's."""
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
    store_base(comps, preset.model, weight_dtype, events, family.caps.block_lists)
    store_text_encoders(comps, preset.model, weight_dtype, events)
    r = build_run(run_dir, preset, events, family, comps, trainables, device, mixed, weight_dtype, processes,
                  phase_steps)
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


def store_base(comps, model_cfg, compute_dtype, events, block_lists: tuple = ()) -> None:
    """model.quantize_base fp8: the frozen denoiser weights in float8 from here on (int8/nf4 happened at loading);
    block_lists: the family's (Capabilities), cast block by block with progress."""
    from engine.models.base_storage import store_in_fp8

    if model_cfg.quantize_base != "fp8" or getattr(comps.denoiser, "easel_fp8", False):  # FLUX: done while loading
        return
    saved = store_in_fp8(comps.denoiser, compute_dtype, progress=lambda n, total: events.emit(
        "status", phase="loading", text="Storing the base weights in fp8", n=n, total=total), block_lists=block_lists)
    amount = f"{saved / 2**30:.2f} GB" if saved >= 2**30 else f"{saved / 2**20:.1f} MB"
    events.emit("status", phase="loading", text=f"Base weights in fp8: {amount} saved", n=1, total=1)


def store_text_encoders(comps, model_cfg, compute_dtype, events) -> None:
    """model.text_encoder_fp8: the frozen text encoders' linears in float8 for the caption-caching pass (config
    validation refuses it with a trained text encoder)."""
    from engine.models.base_storage import store_in_fp8

    if not model_cfg.text_encoder_fp8:
        return
    saved = sum(store_in_fp8(te, compute_dtype) for te in comps.text_encoders if te is not None)
    events.emit("status", phase="loading", text=f"Text encoder in fp8: {saved / 2**30:.2f} GB saved", n=1, total=1)


def build_run(run_dir, preset, events, family, comps, trainables, device, mixed, weight_dtype,
              processes=None, phase_steps=None) -> Run:
    """processes: distributed.Processes of a multi-GPU run; None for one process (the benches build runs so).
    phase_steps(preset, objective name, the dataset's steps, processes) -> (the first phase's steps, the run's):
    the LR schedule spans every phase (reflow's iterations; RL after its warmup); None: the dataset's steps alone."""
    from engine.data.cache import prepare_batches
    from engine.data.plan import batches_per_epoch, steps_per_epoch, total_steps
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
    place_denoiser(comps, device, preset.model.block_swap, training, status, family.caps.block_lists)
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
    objective_name = training.objective if training.objective != "auto" else comps.prediction_type
    objective = make_objective(objective_name, comps.alphas_cumprod, training.timestep_sampling,
                               training.sigmoid_scale, training.discrete_flow_shift, flow_path=training.flow_path)
    if "objective" in comps.extra:  # the DiT's timestep depends on it (t * 1000 for flow, the DDPM step k)
        comps.extra["objective"] = objective
    check_rectified_flow(objective_name, comps.prediction_type, preset.model)
    main = total_steps(training.max_steps, training.max_epochs, per_epoch)
    main, total = (phase_steps or dataset_steps)(preset, objective.name, main, processes.world)
    # a UNet trained as a flow (FLUX and the DiT are flow models already)
    if objective_name == "flow" and comps.prediction_type != "flow" and family.caps.base_model and \
            use_flow_sampler(family.pipeline(comps)):
        comps.extra["rectified_flow"] = True  # saves add a how-to-sample note (engine/models/unet_flow.py)
        events.emit("status", phase="loading", text="Rectified flow: the samples and the saved model use flow Euler "
                                                    "on the straight path")
    optim = make_optimizer_set(preset, trainables, total, accelerator)
    params = [p for modules in trainables.values() for m in modules for p in m.parameters() if p.requires_grad]
    r = Run(run_dir=run_dir, preset=preset, events=events, family=family, comps=comps, objective=objective,
            trainables=trainables, params=params, optim=optim, accelerator=accelerator, batches=batches,
            # each GPU draws its own noise; one GPU draws what it always did
            samples=samples, noise_gen=torch.Generator(device=device).manual_seed(training.seed + processes.rank),
            total_steps=total, device=device, weight_dtype=weight_dtype, processes=processes, phase=DENOISER)
    processes.wrap(trainables, device, training.grad_accum)
    r.main_steps = main
    r.dataset_samples, r.dataset_batches = samples, batches
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


def dataset_steps(preset, objective_name: str, steps: int, processes: int) -> tuple[int, int]:
    """build_run's phase_steps for a run that trains the dataset's steps and nothing after them."""
    return steps, steps


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
