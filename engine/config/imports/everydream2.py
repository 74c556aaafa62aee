"""EveryDream2's train.json (and its command-line names): a full fine-tune of an SD1.x / SD2.x model.

Values that are null in train.json mean "EveryDream2's default", which is Easel's default too: they are skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.config.imports.keys import put

# train.json key -> Easel key (value as it is)
SAME = {"data_root": "dataset.path", "resolution": "dataset.resolution_px", "batch_size": "training.batch_size",
        "grad_accum": "training.grad_accum", "max_epochs": "training.max_epochs", "lr": "optimizers.unet.lr",
        "lr_scheduler": "schedules.unet.type", "lr_warmup_steps": "schedules.unet.warmup_steps",
        "lr_decay_steps": "schedules.unet.lr_decay_steps", "seed": "training.seed",
        "gradient_checkpointing": "training.gradient_checkpointing", "cond_dropout": "dataset.caption_dropout",
        "shuffle_tags": "dataset.shuffle_tags", "sample_steps": "sampling.every_n_steps",
        "ckpt_every_n_minutes": "output.save_every_n_minutes", "save_every_n_epochs": "output.save_every_n_epochs",
        "project_name": "output.run_name", "logdir": "output.dir", "min_snr_gamma": "training.min_snr_gamma",
        "clip_grad_norm": "training.clip_grad_norm", "log_step": "output.log_every_n_steps",
        "reflow_steps": "training.reflow_steps", "reflow_sample_steps": "training.reflow_sample_steps",
        "reflow_gen_batches": "training.reflow_gen_batches", "reflow_train_epochs": "training.reflow_train_epochs",
        "ema_update_interval": "training.ema.update_interval",
        # zero-frequency noise is offset noise: noise + ratio x a per-channel constant
        "zero_frequency_noise_ratio": "training.noise_offset"}
# keys with no Easel meaning, and why (said to the user)
NO_MEANING = {
    "gpuid": "choose the GPU with CUDA_VISIBLE_DEVICES (or training.num_gpus for several)",
    "disable_xformers": "Easel uses PyTorch's own fast attention (SDPA); there is no xformers switch",
    "lowvram": "Easel's memory savers are separate keys (training.gradient_checkpointing, 8-bit optimizers)",
    "notebook": "no meaning outside a notebook",
    "wandb": "Easel logs to TensorBoard (output.tensorboard), not Weights & Biases",
    "write_schedule": "the LR plot (Optimizer & LR tab, python -m engine lr-preview) shows the schedule",
    "save_optimizer": "Easel always keeps the optimizer in the resume state",
    "save_ckpt_dir": "checkpoints go to the run folder's checkpoints/",
    "save_ckpts_from_n_epochs": "not in Easel: checkpoints follow output.save_every_*",
    "scale_lr": "not in Easel: set optimizers.unet.lr to the rate you want",
    "clip_skip": "not in Easel yet",
    "rated_dataset": "not in Easel", "rated_dataset_target_dropout_percent": "not in Easel",
    "enable_zero_terminal_snr": "not in Easel yet", "load_settings_every_epoch": "not in Easel",
    "run_name": "output.run_name comes from project_name",
    "ema_strength_target": "Easel's EMA takes a decay (training.ema.decay)",
    "ema_device": "Easel keeps the EMA beside the weights",
    "ema_sample_nonema_model": "Easel samples the EMA weights when the EMA is on",
    "ema_sample_ema_model": "Easel samples the EMA weights when the EMA is on",
    "ema_resume_model": "a resume restores Easel's EMA from the run's state",
}


def detect(data: dict) -> bool:
    return "data_root" in data or "resume_ckpt" in data


def family_of(model: str) -> str:
    """EveryDream2 trains SD1.x and SD2.x; an SD2 model by its usual names (768-v, 512-base, SD21, v2-1)."""
    name = model.lower().replace("_", "-")
    return "sd2" if any(mark in name for mark in ("sd2", "sd-2", "v2-", "2-1", "2.1", "768-v", "512-base", "sd21")) \
        else "sd15"


def convert(data: dict, folder: Path) -> tuple[dict, list[str]]:
    preset: dict = {"version": 1, "network": {"type": "full"}}
    unmapped: list[str] = []
    if data.get("max_epochs") is not None:  # EveryDream2 counts epochs only
        put(preset, "training.max_steps", 0)
    else:
        unmapped.append("max_epochs is not given (a --config file of EveryDream2 may hold it): Easel's "
                        "training.max_steps is used; set training.max_epochs")
    for key, value in data.items():
        if value is None or key == "config":
            continue
        if key in SAME:
            put(preset, SAME[key], value)
        elif key == "resume_ckpt":
            put(preset, "model.path", value)
            put(preset, "model.family", family_of(str(value)))
        elif key == "disable_textenc_training":
            put(preset, "network.train_text_encoder", not value)
        elif key == "flip_p":
            put(preset, "dataset.flip", value > 0)
            if value not in (0, 0.5):
                unmapped.append(f"flip_p = {value}: Easel flips half of the images when dataset.flip is on")
        elif key == "disable_amp":
            put(preset, "training.precision", "fp32" if value else "bf16")
        elif key == "ema_decay_rate":
            put(preset, "training.ema.enabled", True)
            put(preset, "training.ema.decay", value)
        elif key == "rectified_flow":
            if value:
                put(preset, "training.objective", "flow")
        elif key == "sample_prompts":
            prompts = _prompts(folder / str(value))
            if prompts is None:
                unmapped.append(f"sample_prompts = {value}: no such file next to the config; set sampling.prompts")
            else:
                put(preset, "sampling.prompts", prompts)
        elif key == "validation_config":
            _validation(folder / str(value), preset, unmapped, value)
        elif key == "optimizer_config":
            _optimizer(folder / str(value), preset, unmapped, value)
        elif key in NO_MEANING:
            if value not in (False, 0, "", []):  # a switch left off changes nothing
                unmapped.append(f"{key} = {value}: {NO_MEANING[key]}")
        else:
            unmapped.append(f"{key} = {value}: not an EveryDream2 key Easel knows")
    return preset, unmapped


def _prompts(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _validation(path: Path, preset: dict, unmapped: list, value) -> None:
    """validation_default.json: validate_training and val_split_proportion become validation.fraction."""
    if not path.is_file():
        unmapped.append(f"validation_config = {value}: no such file next to the config; set validation.fraction")
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("validate_training", True) and config.get("val_split_mode", "automatic") == "automatic":
        put(preset, "validation.fraction", config.get("val_split_proportion", 0.15))
    for key in sorted(set(config) - {"validate_training", "val_split_proportion", "val_split_mode"}):
        unmapped.append(f"{value}: {key} = {config[key]}: not in Easel's validation (validation.every_n_steps, "
                        f"validation.keep_best)")


def _optimizer(path: Path, preset: dict, unmapped: list, value) -> None:
    """optimizer.json: base.optimizer / lr / betas / weight_decay, and text_encoder_overrides."""
    if not path.is_file():
        unmapped.append(f"optimizer_config = {value}: no such file next to the config; set optimizers.unet")
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    for part, comp in (("base", "unet"), ("text_encoder_overrides", "text_encoder")):
        section = config.get(part) or {}
        for key, v in section.items():
            if v is None:
                continue
            if key == "optimizer":
                put(preset, f"optimizers.{comp}.type", str(v).lower().replace("_", ""))
            elif key == "lr":
                put(preset, f"optimizers.{comp}.lr", v)
            elif key in ("betas", "weight_decay", "eps"):
                put(preset, f"optimizers.{comp}.{key}", v)
            else:
                unmapped.append(f"{value}: {part}.{key} = {v}: no Easel key")
    for key in sorted(set(config) - {"base", "text_encoder_overrides", "doc"}):
        unmapped.append(f"{value}: {key}: no Easel key")
