"""The kohya_ss GUI's JSON presets and saved configs (LoRA tab): the preset format most hobbyists already have.

kohya_ss writes numbers as strings at times ("320", "12345"); they are read as numbers. Keys left at their off value
(false, 0, empty) change nothing and are not listed; every other key becomes an Easel key or is listed with the
reason.
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.config.imports.keys import put

SAME = {"network_dim": "network.rank", "network_alpha": "network.alpha", "network_dropout": "network.dropout",
        "train_batch_size": "training.batch_size", "gradient_accumulation_steps": "training.grad_accum",
        "gradient_checkpointing": "training.gradient_checkpointing", "seed": "training.seed",
        "noise_offset": "training.noise_offset", "min_snr_gamma": "training.min_snr_gamma",
        "cache_latents": "training.cache_latents", "enable_bucket": "dataset.bucketing",
        "min_bucket_reso": "dataset.min_bucket_px", "max_bucket_reso": "dataset.max_bucket_px",
        "bucket_reso_steps": "dataset.bucket_step_px", "caption_extension": "dataset.caption_ext",
        "caption_dropout_rate": "dataset.caption_dropout", "shuffle_caption": "dataset.shuffle_tags",
        "flip_aug": "dataset.flip", "random_crop": "dataset.random_crop", "prior_loss_weight": "dataset.reg_weight",
        "save_every_n_epochs": "output.save_every_n_epochs", "save_every_n_steps": "output.save_every_n_steps",
        "sample_every_n_steps": "sampling.every_n_steps", "output_dir": "output.dir", "output_name": "output.run_name",
        "pretrained_model_name_or_path": "model.path", "reg_data_dir": "dataset.reg_path",
        "lr_scheduler_num_cycles": "schedules.unet.num_cycles", "lr_scheduler_power": "schedules.unet.power",
        "max_grad_norm": "training.clip_grad_norm"}
OPTIMIZERS = {"adamw": ("adamw", {}), "adamw8bit": ("adamw8bit", {}), "lion": ("lion", {}),
              "lion8bit": ("lion8bit", {}), "sgdnesterov": ("sgd", {"nesterov": True, "momentum": 0.9}),
              "sgdnesterov8bit": ("sgd", {"nesterov": True, "momentum": 0.9}), "prodigy": ("prodigy", {}),
              "adafactor": ("adafactor", {})}
SCHEDULES = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
NO_MEANING = {"xformers": "Easel uses PyTorch's own fast attention (SDPA)", "mem_eff_attn": "Easel uses SDPA",
              "sdxl_no_half_vae": "Easel keeps the SDXL VAE in fp32 where it must",
              "num_cpu_threads_per_process": "no meaning in Easel", "max_data_loader_n_workers": "no meaning in Easel",
              "persistent_data_loader_workers": "no meaning in Easel", "use_wandb": "Easel logs to TensorBoard",
              "training_comment": "kept nowhere (put it in output.run_name or a note)",
              "bucket_no_upscale": "Easel's buckets never upscale beyond the image by more than the bucket step",
              "cache_latents_to_disk": "Easel's latent cache is always on disk", "unit": "a kohya_ss GUI setting",
              "train_on_input": "a kohya_ss LyCORIS setting", "max_token_length": "Easel uses 77 CLIP tokens",
              "sdxl_cache_text_encoder_outputs": "Easel caches text embeddings when the text encoder is frozen",
              "v2": "the family comes from the model (sd2)", "sdxl": "the family comes from the model (sdxl)",
              "flux1_checkbox": "the family comes from the model (flux)", "model_list": "a kohya_ss GUI setting",
              "logging_dir": "Easel writes TensorBoard logs into the run folder"}


def detect(data: dict) -> bool:
    return any(key in data for key in ("LoRA_type", "pretrained_model_name_or_path", "train_data_dir",
                                       "network_dim"))


def _number(value):
    """kohya_ss's strings as numbers ("320" -> 320, "1e-4" -> 0.0001); other values as they are."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?[\d.]+(e-?\d+)?\s*", value, re.I):
        return float(value)
    return value


def _off(value) -> bool:
    return value in (None, False, 0, 0.0, "", "0", [], "none", "None")


def convert(data: dict, folder: Path) -> tuple[dict, list[str]]:
    values = {k: _number(v) for k, v in data.items()}
    preset: dict = {"version": 1, "network": {"type": "lora"}}
    unmapped: list[str] = []
    family = "flux" if values.get("flux1_checkbox") else "sdxl" if values.get("sdxl") else \
        "sd2" if values.get("v2") else "sd15"
    put(preset, "model.family", family)
    handled = {"learning_rate", "unet_lr", "text_encoder_lr", "network_train_unet_only", "max_train_steps",
               "max_train_epochs", "epoch", "lr_scheduler", "lr_warmup", "optimizer", "optimizer_args",
               "max_resolution", "mixed_precision", "save_precision", "train_data_dir", "LoRA_type",
               "v_parameterization", "sample_prompts", "clip_skip"}
    for key, value in values.items():
        if key in SAME and not _off(value):
            put(preset, SAME[key], value)
        elif key in NO_MEANING or key in handled or _off(value):
            continue
        else:
            unmapped.append(f"{key} = {value}: no Easel key")
    for key in NO_MEANING:
        if key in values and not _off(values[key]) and key not in ("v2", "sdxl", "flux1_checkbox"):
            unmapped.append(f"{key} = {values[key]}: {NO_MEANING[key]}")
    if values.get("reg_data_dir"):
        put(preset, "dataset.use_reg", True)
    _dataset(values, preset, unmapped)
    _network(values, preset, unmapped)
    _length_and_schedule(values, preset, unmapped)
    _optimizer(values, preset, unmapped)
    _precision(values, preset, unmapped)
    if values.get("v_parameterization"):
        put(preset, "model.prediction_type", "v_prediction")
    if not _off(values.get("sample_prompts")):
        # kohya_ss's prompt lines carry options after " --" (--n negative, --w width): the prompt is before them
        prompts = [line.split(" --")[0].strip() for line in str(values["sample_prompts"]).splitlines()]
        put(preset, "sampling.prompts", [p for p in prompts if p])
    if values.get("clip_skip") not in (None, "", 0, 1):
        unmapped.append(f"clip_skip = {values['clip_skip']}: not in Easel yet (it uses the model's last layer)")
    return preset, unmapped


def _dataset(values: dict, preset: dict, unmapped: list) -> None:
    """train_data_dir holds kohya's N_concept folders (N repeats): one of them is Easel's dataset.path."""
    root = values.get("train_data_dir")
    if not root:
        return
    concepts = sorted(p for p in Path(str(root)).glob("*") if p.is_dir() and re.match(r"^\d+_", p.name)) \
        if Path(str(root)).is_dir() else []
    if len(concepts) == 1:
        put(preset, "dataset.path", str(concepts[0]))
        put(preset, "dataset.repeats", int(concepts[0].name.split("_", 1)[0]))
    else:
        put(preset, "dataset.path", str(root))
        if len(concepts) > 1:
            unmapped.append(f"train_data_dir = {root}: {len(concepts)} concept folders; Easel trains one folder: set "
                            f"dataset.path to one of them ({', '.join(p.name for p in concepts[:3])}) and "
                            f"dataset.repeats to its number")
    resolution = values.get("max_resolution")
    if resolution:
        sides = [int(s) for s in re.findall(r"\d+", str(resolution))]
        if sides:
            put(preset, "dataset.resolution_px", max(sides))


def _network(values: dict, preset: dict, unmapped: list) -> None:
    kind = values.get("LoRA_type", "Standard")
    if kind not in ("Standard", "Kohya LoCon") and kind:
        unmapped.append(f"LoRA_type = {kind}: Easel trains a standard LoRA (no LyCORIS types)")
    unet_lr = values.get("unet_lr") or values.get("learning_rate")
    te_lr = values.get("text_encoder_lr") if values.get("text_encoder_lr") not in (None, "") else unet_lr
    if unet_lr:
        put(preset, "optimizers.unet.lr", unet_lr)
    trains_te = not values.get("network_train_unet_only") and bool(te_lr)
    put(preset, "network.train_text_encoder", trains_te)
    if trains_te:
        put(preset, "optimizers.text_encoder.lr", te_lr)


def _length_and_schedule(values: dict, preset: dict, unmapped: list) -> None:
    steps = values.get("max_train_steps") or 0
    epochs = values.get("max_train_epochs") or values.get("epoch") or 0
    put(preset, "training.max_steps", int(steps) if steps else 0)
    if not steps:
        put(preset, "training.max_epochs", int(epochs) if epochs else 1)
    kind = values.get("lr_scheduler")
    if kind in SCHEDULES:
        put(preset, "schedules.unet.type", kind)
        put(preset, "schedules.text_encoder.type", kind)
    elif kind:
        unmapped.append(f"lr_scheduler = {kind}: not an Easel schedule ({', '.join(SCHEDULES)}); constant is used")
    warmup = values.get("lr_warmup")  # percent of the steps
    if warmup and steps:
        for comp in ("unet", "text_encoder"):
            put(preset, f"schedules.{comp}.warmup_steps", round(float(warmup) / 100 * int(steps)))
    elif warmup:
        unmapped.append(f"lr_warmup = {warmup} %: set schedules.unet.warmup_steps (the steps are not known here)")


def _optimizer(values: dict, preset: dict, unmapped: list) -> None:
    name = str(values.get("optimizer") or "AdamW")
    kind, params = OPTIMIZERS.get(name.lower().replace("_", ""), (None, {}))
    if kind is None:
        unmapped.append(f"optimizer = {name}: not in Easel (AdamW, AdamW8bit, Lion, SGD, Prodigy, Adafactor); adamw "
                        f"is used")
        kind = "adamw"
    args = dict(re.findall(r"(\w+)\s*=\s*([^\s]+)", str(values.get("optimizer_args") or "")))
    for key, raw in args.items():
        value = [float(x) for x in raw.split(",")] if "," in raw else _number(raw)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        params[key] = value
    for comp in ("unet", "text_encoder"):
        put(preset, f"optimizers.{comp}.type", kind)
        for key, value in params.items():
            put(preset, f"optimizers.{comp}.{key}", value)


def _precision(values: dict, preset: dict, unmapped: list) -> None:
    mixed = values.get("mixed_precision")
    if mixed:
        put(preset, "training.precision", {"no": "fp32"}.get(str(mixed), str(mixed)))
    saved = values.get("save_precision")
    if saved:
        put(preset, "output.save_precision", {"float": "fp32"}.get(str(saved), str(saved)))
