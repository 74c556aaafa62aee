"""Checks that involve more than one field of a preset (single fields are checked while loading, in convert.py)."""
from __future__ import annotations

from engine.config.schema import Preset


def validate(p: Preset) -> list[tuple[str, str]]:
    """Problems that involve more than one field (single fields are checked while loading). What the family can
    do comes from its Capabilities (engine/models/families/<name>/caps.py), never from its name."""
    from engine.models.families import capabilities

    out = []
    d, t, n, m = p.dataset, p.training, p.network, p.model
    caps = capabilities(m.family)
    multiple = caps.latent_multiple(m)
    if d.resolution_px % multiple:
        out.append(("dataset.resolution_px", f"{d.resolution_px} must be a multiple of {multiple} for {m.family}"))
    if d.bucketing and d.bucket_step_px % multiple:
        out.append(("dataset.bucket_step_px", f"{d.bucket_step_px} must be a multiple of {multiple} for "
                                              f"{m.family}{caps.multiple_why}"))
    if d.bucketing and not d.min_bucket_px <= d.resolution_px <= d.max_bucket_px:
        out.append(("dataset.resolution_px", f"{d.resolution_px} must lie between dataset.min_bucket_px "
                                             f"({d.min_bucket_px}) and dataset.max_bucket_px ({d.max_bucket_px})"))
    if d.use_reg and not d.reg_path:
        out.append(("dataset.reg_path", "dataset.use_reg is on but no regularization folder is set"))
    if t.max_steps == 0 and t.max_epochs == 0:
        out.append(("training.max_steps", "set training.max_steps or training.max_epochs (both are 0)"))
    out += objective_problems(p, caps)
    if t.reflow_steps and t.mode == "vae":
        out.append(("training.reflow_steps", "reflow trains the denoiser, not the VAE (training.mode vae)"))
    if n.type not in caps.network_types and t.mode != "vae":
        why = ": a DiT trained from scratch has no base model to adapt" if not caps.base_model else ""
        out.append(("network.type", f"{n.type!r} cannot train family {m.family!r}{why}; use network.type: "
                                    f"{' or '.join(caps.network_types)}"))
    out += caps.checks(p)
    out += rl_problems(p)
    if n.train_text_encoder and caps.trainable_text_encoders == 0:
        out.append(("network.train_text_encoder", f"{caps.label}'s text encoder does not train here (its outputs "
                                                  f"are cached, and the encoder leaves the GPU); use false"))
    if n.train_text_encoder and m.text_encoder_fp8:
        out.append(("model.text_encoder_fp8", "stores the text encoder for encoding only; it cannot train in fp8 "
                                              "(set network.train_text_encoder: false, or this to false)"))
    if n.te_two_phase and not n.train_text_encoder:
        out.append(("network.te_two_phase", "needs network.train_text_encoder: true"))
    out += model_file_problems(p, caps)
    if not p.output.formats and n.type == "lora":
        out.append(("output.formats", "choose at least one of kohya, diffusers"))
    if p.optimizers["unet"].lr is None:
        out.append(("optimizers.unet.lr", "the UNet/transformer needs a learning rate"))
    for comp, opt in p.optimizers.items():
        if opt.type == "sgd" and opt.params.get("nesterov") and not opt.params.get("momentum"):
            out.append((f"optimizers.{comp}.nesterov", "Nesterov momentum needs momentum > 0"))
    for comp, sched in p.schedules.items():
        if sched.type == "ReduceLROnPlateau" and sched.params.get("mode", "min") not in ("min", "max"):
            out.append((f"schedules.{comp}.mode", f"{sched.params['mode']!r} is not one of min, max"))
        elif sched.type == "ReduceLROnPlateau" and sched.params.get("mode") == "max":
            # every metric a plateau watches today is a loss; max is for a higher-is-better one (rewards)
            out.append((f"schedules.{comp}.mode", "max waits for a metric to rise, and the loss it watches falls as "
                                                  "training improves: use min"))
    return out


def objective_problems(p: Preset, caps) -> list[tuple[str, str]]:
    """training.objective, flow_path, timestep_sampling, reflow and sampling.sampler against what the family
    trains and samples with."""
    out = []
    t, m, family = p.training, p.model, p.model.family
    objective = t.objective if t.objective != "auto" else m.prediction_type
    if objective not in ("auto", *caps.objectives):
        if objective == "sample":
            out.append(("training.objective", f"'sample' (x0 prediction) is for models trained from scratch (family "
                                              f"dit); {family} predicts what its base model was trained on"))
        else:
            out.append(("training.objective", f"{objective!r} cannot train family {family!r} (use "
                                              f"{' or '.join(repr(o) for o in (*caps.objectives, 'auto'))})"))
    if t.reflow_steps and t.objective not in ("flow", "auto"):
        out.append(("training.reflow_steps", f"reflow straightens a flow: it needs training.objective flow, not "
                                             f"{t.objective!r}"))
    if t.objective == "flow" and m.prediction_type == "epsilon":  # the model's own config is read at start
        out.append(("training.objective", "'flow' (rectified flow) needs a v-prediction base model, and "
                                          "model.prediction_type says epsilon"))
    allowed = caps.samplers_for(t.objective, m.prediction_type)
    if p.sampling.sampler not in allowed:
        out.append(("sampling.sampler", f"{p.sampling.sampler!r} cannot sample {caps.a_label} model trained with "
                                        f"objective {objective!r}: use one of {', '.join(allowed)}"))
    if t.flow_path not in caps.flow_paths:
        out.append(("training.flow_path", f"{t.flow_path!r} is for models trained from scratch (family dit); a "
                                          f"pretrained {family} model was trained on the straight path: keep "
                                          f"'condot'"))
    if t.timestep_sampling in ("shift", "flux_shift") and not (caps.flow_only or objective == "flow"):
        out.append(("training.timestep_sampling", f"{t.timestep_sampling!r} shifts flow-matching noise levels; "
                                                  f"use uniform, logit_normal or sigmoid for {family}"))
    return out


def model_file_problems(p: Preset, caps) -> list[tuple[str, str]]:
    """Separate component files and block swap, for the families that load and swap them."""
    from engine.models.families import FOLDERS, capabilities

    out, m = [], p.model
    for key in ("clip_l_path", "t5_path", "text_encoder_path"):
        if getattr(m, key) and key not in caps.separate_files:
            users = " / ".join(capabilities(n).label for n in FOLDERS if key in capabilities(n).separate_files)
            out.append((f"model.{key}", f"is for {users}'s separate text-encoder files; family {m.family} loads "
                                        f"its text encoders from model.path"))
    if m.preview_path and not caps.preview_model:
        users = " / ".join(capabilities(n).label for n in FOLDERS if capabilities(n).preview_model)
        out.append(("model.preview_path", f"renders samples on a distilled sibling ({users}); family {m.family} "
                                          f"has none: leave it empty"))
    if m.block_swap and not caps.block_swap:
        users = " / ".join(capabilities(n).label for n in FOLDERS if capabilities(n).block_swap)
        out.append(("model.block_swap", f"block swap is for {users}'s transformer blocks; use 0 for {m.family}"))
    if m.block_swap and not p.training.gradient_checkpointing:
        out.append(("model.block_swap", "needs training.gradient_checkpointing: true (the swapped blocks are "
                                        "recomputed in the backward pass, when their weights are back on the GPU)"))
    return out


def rl_problems(p: Preset) -> list[tuple[str, str]]:
    """training.mode rl: what its phase needs before minutes of model loading (engine/rl)."""
    from engine.config.schema import REWARD_NAMES

    t, rl = p.training, p.rl
    if t.mode != "rl":
        return []
    out = []
    if t.max_steps == 0:
        out.append(("training.max_steps", "RL counts optimizer steps: set training.max_steps (max_epochs counts "
                                          "passes over a dataset, which RL does not make)"))
    elif rl.warmup_steps >= t.max_steps:
        out.append(("rl.warmup_steps", f"{rl.warmup_steps} supervised steps leave none of training.max_steps "
                                       f"({t.max_steps}) for RL: lower it, or raise training.max_steps"))
    if not rl.rewards:
        out.append(("rl.rewards", f"choose at least one reward: {', '.join(REWARD_NAMES)}"))
    if t.num_gpus > 1:
        out.append(("training.num_gpus", "RL trains on one GPU for now: set 1"))
    if t.reflow_steps:
        out.append(("training.reflow_steps", "reflow and RL are separate runs: set 0 here"))
    objective = t.objective if t.objective != "auto" else p.model.prediction_type
    if t.flow_path != "condot":
        out.append(("training.flow_path", "RL samples the straight flow path (Flow-GRPO's SDE): use condot"))
    if objective == "sample":
        out.append(("training.objective", "RL needs an epsilon, v_prediction or flow model"))
    if rl.method == "grpo" and rl.num_images_per_prompt == 1 and rl.num_batches_per_epoch * t.batch_size == 1 and \
            not rl.per_prompt_stat_tracking:
        out.append(("rl.num_images_per_prompt", "one image per epoch has advantage 0, so nothing would learn: use "
                                                "4-8 images per prompt (the group GRPO compares)"))
    return out


def needs_dataset(preset: Preset) -> bool:
    """Every run trains on its dataset, but RL without a supervised warmup on a prompts file."""
    rl = preset.rl
    return not (preset.training.mode == "rl" and rl.warmup_steps == 0 and rl.prompts_file)


def advice(p: Preset) -> list[tuple[str, str]]:
    """(key, message) for settings that are valid but rarely what was meant: said as a warning when a run starts
    and next to the field in the GUI, never refused."""
    from engine.models.families import capabilities

    out = []
    for comp, opt in p.optimizers.items():  # legal (re-saving a LoRA unchanged), but rarely what was meant
        if opt.lr == 0 and (comp == "unet" or p.network.train_text_encoder):
            out.append((f"optimizers.{comp}.lr", f"the learning rate is 0, so this run will not change the {comp} "
                                                 f"at all (1e-4 is the usual LoRA learning rate)."))
    trigger = p.dataset.trigger.strip()
    prompts = p.sampling.prompts
    if trigger and prompts and capabilities(p.model.family).base_model and not any(trigger.lower() in q.lower() for q in prompts):
        out.append(("sampling.prompts", f"no sample prompt contains the trigger '{trigger}': the samples will not "
                                        f"show what the LoRA learned. Put '{trigger}' in at least one prompt."))
    return out + capabilities(p.model.family).advice(p)
