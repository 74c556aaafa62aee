"""The preset schema: every field of a preset, with its type, default, unit, range and one line of help.

Torch-free. This file is data only: the sections below ARE the documentation of the YAML format, and the GUI
builds its form from the same metadata (`help`, `unit`, `min`, `max`, `choices`, `advanced`).
Loading is config/load.py, checks across fields config/validate.py, saving config/save.py.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

from engine.config.optim_specs import OPTIMIZER_PARAMS, SCHEDULE_PARAMS

CURRENT_VERSION = 1

FAMILIES = ("sd15", "sd2", "sdxl", "flux", "dit")
QUANTIZE_BASE = ("none", "fp8", "int8", "nf4")
TIMESTEP_SAMPLING = ("uniform", "logit_normal", "sigmoid", "shift", "flux_shift")
OBJECTIVES = ("auto", "epsilon", "v_prediction", "sample", "flow")
FLOW_PATHS = ("condot", "cosine", "vp", "linear_vp")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PRECISIONS = ("bf16", "fp16", "fp32")
TRAINING_PRECISIONS = ("auto", *PRECISIONS)
EXPORT_FORMATS = ("kohya", "diffusers")
# The optimizer and schedule names; their parameters are in engine/config/optim_specs.py.
OPTIMIZER_TYPES = ("adamw", "adamw8bit", "lion", "lion8bit", "sgd", "prodigy", "adafactor")
SCHEDULE_TYPES = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
    "CosineAnnealingLR", "LinearLR", "ExponentialLR", "ConstantLR", "StepLR", "ReduceLROnPlateau",
)
COMPONENTS = ("unet", "text_encoder", "vae", "discriminator")
# other trainers' names for the denoiser's component (FluxFlow: flow; diffusers/SimpleTuner: transformer)
COMPONENT_ALIASES = {"transformer": "unet", "flow": "unet"}
TRAINING_MODES = ("denoiser", "vae", "rl")
RL_METHODS = ("grpo", "nft")
NFT_ADV_MODES = ("normal", "positive_only", "negative_only", "one_only", "binary")
# rl.rewards names (engine/rl/rewards/); a preset weighs any of them
REWARD_NAMES = ("jpeg_compressibility", "jpeg_incompressibility", "brightness", "clip_score", "aesthetic", "python",
                "server")
VAE_PARTS = ("whole", "decoder")
RECONSTRUCTION_LOSSES = ("l1", "mse")


def opt(default, help, *, unit=None, min=None, max=None, choices=None, choice_labels=None, advanced=False, env=None):
    """A schema field. `min`/`max` are inclusive; `choices` restricts a string (or each item of a list);
    `choice_labels` ({value: words}) is how the GUI shows a choice."""
    meta = {"help": help, "unit": unit, "min": min, "max": max, "choices": choices, "advanced": advanced, "env": env,
            "choice_labels": choice_labels or {}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DitConfig:
    """A small DiT trained from scratch (model.family: dit), built on diffusers' DiT transformer."""
    depth: int = opt(6, "Transformer blocks.", min=1, max=64)
    width: int = opt(384, "Hidden width (a multiple of heads).", min=32, max=4096)
    heads: int = opt(6, "Attention heads.", min=1, max=64)
    patch_size: int = opt(2, "Side of the square patches the image is cut into (tokens = (size / patch)^2).",
                          unit="px", min=1, max=32)
    space: str = opt("pixel", "Train on pixels, or on the latents of model.vae_path's VAE (8x smaller).",
                     choices=("pixel", "latent"))
    conditioning: str = opt("none", "none: unconditional; class: one class per sub-folder of the dataset; channels: "
                                    "named .npz arrays stacked as context channels.",
                            choices=("none", "class", "channels"))
    context_arrays: list = opt([], "conditioning channels: the .npz arrays stacked as context channels, in order.")
    target_array: str = opt("", "conditioning channels: the .npz array the model learns to generate.")
    coordinate_grid: bool = opt(False, "conditioning channels: add a 2-channel (y, x) coordinate grid to the context.")
    array_aliases: list = opt(["robot=robot_image"], "Legacy .npz key names, as old=new (the guide's data uses "
                                                     "'robot' for 'robot_image').", advanced=True)


@dataclass(frozen=True)
class ModelConfig:
    family: str = opt("sd15", "Model family of the base model.", choices=FAMILIES)
    path: str = opt("", "Base model: a diffusers folder, a single .safetensors/.ckpt file, or a Hub id "
                        "(e.g. stable-diffusion-v1-5/stable-diffusion-v1-5).", env="MODEL_PATH")
    single_file_config: str = opt("", "For a single-file checkpoint: a local diffusers-format folder with the "
                                      "model's configs and tokenizers (no download needed).", advanced=True)
    prediction_type: str = opt("auto", "What the base model predicts. auto reads the model's scheduler config "
                                       "(SD2-768 models are v_prediction).", choices=OBJECTIVES, advanced=True)
    quantize_base: str = opt("none", "Store the frozen base (FLUX: the transformer) in less memory: fp8 (half of "
                                     "bf16, computed in bf16; any GPU or the CPU), int8 or nf4 (bitsandbytes, "
                                     "CUDA only).", choices=QUANTIZE_BASE,
                             choice_labels={"none": "none (bf16)", "fp8": "fp8 storage, bf16 compute",
                                            "int8": "int8 (bitsandbytes)", "nf4": "NF4 (bitsandbytes)"})
    vae_path: str = opt("", "Optional separate VAE (folder or file; FLUX: ae.safetensors); empty uses the model's "
                            "own.", advanced=True)
    clip_l_path: str = opt("", "FLUX from single files: the CLIP-L text encoder file (clip_l.safetensors). Empty: "
                               "from model.path's folder.", advanced=True)
    t5_path: str = opt("", "FLUX from single files: the T5-XXL text encoder file (t5xxl_fp16.safetensors or "
                           "t5xxl_fp8_e4m3fn.safetensors). Empty: from model.path's folder.", advanced=True)
    dit: DitConfig = field(default_factory=DitConfig)
    block_swap: int = opt(0, "FLUX: keep this many transformer blocks in CPU RAM and bring each to the GPU while it "
                             "runs (less VRAM, slower; 0 = off).", unit="blocks", min=0, max=57, advanced=True)


@dataclass(frozen=True)
class DatasetConfig:
    path: str = opt("", "Folder with your images and captions (images/ + captions/, or side by side).",
                    env="DATA_DIR")
    trigger: str = opt("", "Trigger token that should appear in every caption, e.g. ohwx. Empty: none.")
    caption_ext: str = opt(".txt", "Extension of the caption files.", advanced=True)
    repeats: int = opt(1, "How many times each image is seen per epoch.", min=1, max=1000)
    resolution_px: int = opt(512, "Training resolution: images are bucketed to about this many pixels squared.",
                             unit="px", min=32, max=4096, env="RESOLUTION")
    bucketing: bool = opt(True, "Group images by aspect ratio instead of cropping them square.")
    min_bucket_px: int = opt(256, "Smallest bucket side.", unit="px", min=64, max=4096, advanced=True,
                             env="MIN_BUCKET_RESO")
    max_bucket_px: int = opt(1024, "Largest bucket side.", unit="px", min=64, max=8192, advanced=True,
                             env="MAX_BUCKET_RESO")
    bucket_step_px: int = opt(64, "Bucket sides are multiples of this.", unit="px", min=8, max=256, advanced=True)
    random_crop: bool = opt(False, "Crop at a random position inside the bucket (off: centre crop).", advanced=True)
    flip: bool = opt(False, "Randomly mirror images left-right (not for faces with asymmetric features or text).",
                     advanced=True)
    caption_dropout: float = opt(0.0, "Chance of training an image with an empty caption.", min=0.0, max=1.0,
                                 advanced=True)
    shuffle_tags: bool = opt(False, "Shuffle comma-separated tags every time a caption is used.", advanced=True)
    keep_tags: int = opt(1, "With shuffle_tags: how many leading tags stay in place (the trigger).", min=0,
                         max=100, advanced=True)
    use_reg: bool = opt(False, "Train on regularization images too (keeps the model's idea of the class).",
                        env="USE_REG")
    reg_path: str = opt("", "Folder of regularization images with captions (same layout as the dataset).",
                        env="REG_DIR")
    reg_weight: float = opt(1.0, "Loss weight of regularization images.", min=0.0, max=10.0, advanced=True)
    reg_repeats: int = opt(1, "How many times each regularization image is seen per epoch.", min=1, max=1000,
                           advanced=True)


@dataclass(frozen=True)
class NetworkConfig:
    type: str = opt("lora", "lora: train a small adapter file. full: fine-tune the whole model.",
                    choices=("lora", "full"))
    rank: int = opt(16, "LoRA rank (dim): capacity of the adapter.", min=1, max=1024, env="RANK")
    alpha: float = opt(16.0, "LoRA alpha: the adapter is scaled by alpha / rank.", min=0.0, max=4096.0, env="ALPHA")
    dropout: float = opt(0.0, "Dropout inside the LoRA layers (helps against overfitting).", min=0.0, max=0.9)
    targets: list = opt([], "Module names that get LoRA layers; empty uses the family's default "
                            "(attention projections).", advanced=True)
    init_from: str = opt("", "Continue training from this LoRA .safetensors file.", advanced=True)
    train_text_encoder: bool = opt(False, "Also train the text encoder(s). Off by default: a unique trigger "
                                          "token rarely needs it.", env="ENABLE_TE")
    te_lr_ratio: float = opt(0.4, "Text-encoder LR = this x UNet LR when the text encoder's own lr is empty.",
                             min=0.0, max=10.0, advanced=True)
    lora_modulation: bool = opt(False, "FLUX: also put LoRA layers on the blocks' modulation (adaLN) linears.",
                                advanced=True)
    te_two_phase: bool = opt(False, "Train the text encoder only for the first part of the run, then freeze it.",
                             env="TWO_PHASE_TE")
    te_phase_fraction: float = opt(0.5, "With te_two_phase: fraction of the steps that train the text encoder.",
                                   min=0.0, max=1.0, advanced=True)


@dataclass(frozen=True)
class EmaConfig:
    enabled: bool = opt(False, "Keep an exponential moving average of the trained weights and save it.")
    decay: float = opt(0.999, "EMA decay per update (the RL guide: 0.9999 for GRPO, 0.999 for NFT).", min=0.0,
                       max=1.0)
    update_interval: int = opt(1, "Update the average every N optimizer steps (the RL guide's "
                                  "ema_update_interval).", unit="steps", min=1, max=100_000, advanced=True)


@dataclass(frozen=True)
class TrainingConfig:
    mode: str = opt("denoiser", "What trains: denoiser (the UNet/transformer, as network.type says), vae (the "
                                "model's VAE, with the vae section's KL and optional discriminator) or rl (the "
                                "denoiser against a reward: the rl section's GRPO or DiffusionNFT).",
                    choices=TRAINING_MODES)
    max_steps: int = opt(1000, "Optimizer steps to train; 0 trains for max_epochs instead.", unit="steps", min=0,
                         max=10_000_000, env="MAX_STEPS")
    max_epochs: int = opt(0, "Epochs to train when max_steps is 0.", unit="epochs", min=0, max=100_000)
    batch_size: int = opt(1, "Images per batch.", min=1, max=512, env="BATCH_SIZE")
    grad_accum: int = opt(1, "Batches accumulated per optimizer step (effective batch = batch x this).", min=1,
                          max=1024, env="GRAD_ACCUM")
    num_gpus: int = opt(1, "GPUs that train together, one engine process each (through accelerate launch); every "
                           "GPU trains batch_size images per batch, so the effective batch is batch x "
                           "grad_accum x this.", min=1, max=64, env="NUM_GPUS", advanced=True)
    precision: str = opt("auto", "Mixed precision. auto: bf16 on GPUs that have it (RTX 30xx and newer), fp16 on "
                                 "older cards, fp32 on the CPU.", choices=TRAINING_PRECISIONS)
    gradient_checkpointing: bool = opt(True, "Recompute activations in the backward pass: much less VRAM, ~20% "
                                             "slower.")
    seed: int = opt(42, "Random seed; the same seed and data give the same run.", min=0, max=2**32 - 1, env="SEED")
    objective: str = opt("auto", "Training target. auto follows the model (epsilon, v_prediction, or flow for "
                                 "FLUX).", choices=OBJECTIVES, advanced=True)
    timestep_sampling: str = opt("uniform", "How noise levels are drawn (flow models): uniform; logit_normal or "
                                            "sigmoid (favour the middle); shift (sigmoid, then shifted towards noise "
                                            "by discrete_flow_shift); flux_shift (shifted by the image size, as FLUX "
                                            "samples).", choices=TIMESTEP_SAMPLING, advanced=True)
    sigmoid_scale: float = opt(1.0, "sigmoid / shift / flux_shift: scale of the normal draw before the sigmoid "
                                    "(larger: more weight at the ends).", min=0.01, max=10.0, advanced=True)
    discrete_flow_shift: float = opt(3.1582, "shift: t' = s t / (1 + (s - 1) t); larger trains more at high noise "
                                             "(sd-scripts' FLUX default 3.1582).", min=0.01, max=100.0, advanced=True)
    guidance_scale: float = opt(1.0, "FLUX dev: the guidance value given to the guidance embedding while training "
                                     "(1.0 as sd-scripts and the FLUX guide use).", min=0.0, max=100.0, advanced=True)
    flow_path: str = opt("condot", "Flow matching from scratch (DiT): the probability path of the flow-matching "
                                   "package: condot (straight, optimal-transport), cosine, vp, linear_vp.",
                         choices=FLOW_PATHS, advanced=True)
    num_train_timesteps: int = opt(1000, "DDPM from scratch (DiT): noise steps of the schedule.", min=2,
                                   max=100_000, advanced=True)
    beta_schedule: str = opt("linear", "DDPM from scratch (DiT): diffusers' beta schedule.", choices=BETA_SCHEDULES,
                             advanced=True)
    max_sequence_length: int = opt(0, "FLUX: T5 tokens per caption (0 = the model's: 512 dev, 256 schnell).",
                                   unit="tokens", min=0, max=512, advanced=True)
    noise_offset: float = opt(0.0, "Adds a small constant to the noise so the model learns very dark and bright "
                                   "images. 0.05-0.1 typical.", min=0.0, max=1.0, env="NOISE_OFFSET")
    min_snr_gamma: float = opt(0.0, "Min-SNR loss weighting (0 = off; 5 is the paper's value).", min=0.0, max=100.0,
                               advanced=True)
    clip_grad_norm: float = opt(1.0, "Clip the gradient norm to this (0 = off).", min=0.0, max=1000.0, advanced=True)
    ema: EmaConfig = field(default_factory=EmaConfig)
    cache_latents: bool = opt(True, "Encode every image once and reuse the latents (much faster; off when "
                                    "random_crop or flip need fresh crops).", advanced=True)
    cache_text_embeddings: bool = opt(True, "Encode captions once when the text encoder is frozen.", advanced=True)
    compile: bool = opt(False, "Compile the denoiser's repeated blocks with torch.compile (diffusers' regional "
                               "compilation): faster steps on a GPU after a one-off compile of about a minute.",
                        advanced=True)
    auto_batch_size: bool = opt(False, "Before training, find the largest batch that fits the GPU's free memory at "
                                       "the largest bucket (a few probing steps); replaces training.batch_size.",
                                advanced=True)
    reflow_steps: int = opt(0, "Reflow iterations after the training (EveryDream2's --reflow_steps; flow "
                               "objective only): each generates pairs with the model and trains on them, which "
                               "straightens the flow.", min=0, max=100, advanced=True)
    reflow_sample_steps: int = opt(0, "Euler steps of each generated pair (0: sampling.steps, and 50 if that is "
                                      "0 too).", unit="steps", min=0, max=1000, advanced=True)
    reflow_gen_batches: int = opt(1, "Dataset batches whose captions the pairs of one iteration take: "
                                     "reflow_gen_batches x batch_size pairs.", min=1, max=100_000, advanced=True)
    reflow_train_epochs: int = opt(1, "Epochs of training on each iteration's pairs.", unit="epochs", min=1,
                                   max=10_000, advanced=True)
    preserve_lr: bool = opt(False, "On resume, keep the learning rate the saved run had, even if the schedule or "
                                   "LR in the preset changed.", advanced=True)


@dataclass(frozen=True)
class OptimizerConfig:
    """One component's optimizer. Parameters other than type and lr depend on the type (engine/config/optim_specs.py)."""
    type: str = opt("adamw", "Optimizer.", choices=OPTIMIZER_TYPES)
    lr: Optional[float] = opt(1e-4, "Learning rate. Empty for the text encoder: te_lr_ratio x UNet LR.",
                              min=0.0, max=10.0)
    params: dict = opt({}, "Optimizer parameters (betas, eps, weight_decay, momentum, ...).", advanced=True)


@dataclass(frozen=True)
class ScheduleConfig:
    """One component's learning-rate schedule. Parameters depend on the type (engine/config/optim_specs.py)."""
    type: str = opt("constant_with_warmup", "Learning-rate schedule.", choices=SCHEDULE_TYPES)
    warmup_steps: int = opt(0, "Steps over which the LR rises linearly from 0.", unit="steps", min=0,
                            max=10_000_000)
    lr_decay_steps: int = opt(0, "Steps over which the schedule decays (0 = the whole run).", unit="steps", min=0,
                              max=10_000_000, advanced=True)
    params: dict = opt({}, "Schedule parameters (eta_min_factor, gamma, step_size, ...).", advanced=True)


@dataclass(frozen=True)
class SamplingConfig:
    prompts: list = opt([], "Prompts rendered during training (use your trigger token).")
    eval_prompts_file: str = opt("", "A text file of evaluation prompts (one per line, # for comments), rendered "
                                     "once after the last step at every strength; relative paths are from the Easel "
                                     "folder (presets/flux-eval-prompts.txt is the FLUX identity guide's).",
                                 advanced=True)
    negative_prompt: str = opt("", "Negative prompt for every sample.", advanced=True)
    every_n_steps: int = opt(0, "Render samples every N steps (0 = only at the end).", unit="steps", min=0,
                             max=10_000_000)
    at_start: bool = opt(False, "Also render samples before training (the base model, for comparison).",
                         advanced=True)
    steps: int = opt(25, "Denoising steps per sample.", min=1, max=500)
    guidance_scale: float = opt(7.0, "Classifier-free guidance (FLUX dev: distilled guidance, ~3.5).", min=0.0,
                                max=50.0)
    seed: int = opt(42, "Seed for samples (the same seed makes samples comparable across steps).", min=0,
                    max=2**32 - 1)
    width_px: int = opt(0, "Sample width (0 = training resolution).", unit="px", min=0, max=4096, advanced=True)
    height_px: int = opt(0, "Sample height (0 = training resolution).", unit="px", min=0, max=4096, advanced=True)
    strengths: list = opt([1.0], "LoRA strengths to render each prompt at, e.g. 0.5 0.8 1.0 1.2.")
    sampler: str = opt("default", "Sampler; default uses the model's own scheduler. Flow models from scratch: euler, "
                                  "midpoint, rk4 (fixed steps) or dopri5 (adaptive, atol/rtol); DDPM ones: ddim "
                                  "(ddim_eta) or ddpm.",
                       choices=("default", "euler", "ddim", "dpmpp_2m", "flow_euler", "midpoint", "rk4", "dopri5",
                                "ddpm"), advanced=True)
    ddim_eta: float = opt(0.0, "DDIM: 0 is deterministic, 1 is DDPM-like.", min=0.0, max=1.0, advanced=True)
    atol: float = opt(1e-5, "dopri5: absolute tolerance.", min=0.0, max=1.0, advanced=True)
    rtol: float = opt(1e-5, "dopri5: relative tolerance.", min=0.0, max=1.0, advanced=True)


@dataclass(frozen=True)
class ValidationConfig:
    """A held-out split: its loss on fixed noise and noise levels, comparable across steps, picks the best files."""
    fraction: float = opt(0.0, "Share of the dataset held out for validation (0 = none, unless folder is set).",
                          min=0.0, max=0.5)
    folder: str = opt("", "A separate validation folder (same layout as the dataset); overrides fraction.")
    every_n_steps: int = opt(0, "Validate every N steps (0 = at every checkpoint save and at the end).",
                             unit="steps", min=0, max=10_000_000)
    keep_best: int = opt(3, "Keep the K checkpoints with the lowest validation loss (named with it).", min=0,
                         max=1000)
    seed: int = opt(1234, "Seed of the fixed validation noise and noise levels.", min=0, max=2**32 - 1,
                    advanced=True)


@dataclass(frozen=True)
class OutputConfig:
    dir: str = opt("runs", "Folder that holds the run folders (relative to the Easel folder).", env="OUT_DIR")
    run_name: str = opt("lora", "Name of the run; the run folder is <name>-<date>-<time>.", env="RUN_NAME")
    formats: list = opt(["kohya"], "LoRA file formats. kohya: A1111/Forge, ComfyUI and sd-scripts load it. diffusers: "
                        "for diffusers / Python scripts (for SD 1.5, SD 2 and SDXL, A1111/Forge and ComfyUI do not "
                        "load it; FLUX LoRAs use it).", choices=EXPORT_FORMATS,
                        choice_labels={"kohya": "kohya (A1111 / Forge / ComfyUI)",
                                       "diffusers": "diffusers (for diffusers / Python)"})
    save_every_n_steps: int = opt(0, "Save a checkpoint every N steps (0 = off).", unit="steps", min=0,
                                  max=10_000_000)
    save_every_n_minutes: float = opt(0.0, "Save a checkpoint every N minutes of training (0 = off).",
                                      unit="min", min=0.0, max=100_000.0)
    save_every_n_epochs: int = opt(0, "Save a checkpoint every N epochs (0 = off).", unit="epochs", min=0,
                                   max=100_000)
    keep_last: int = opt(3, "Keep only the newest N checkpoints (0 = keep all). The final file is always kept.",
                         min=0, max=10_000, advanced=True)
    save_precision: str = opt("fp16", "Precision of the saved LoRA tensors.", choices=PRECISIONS, advanced=True)
    log_every_n_steps: int = opt(1, "A step line in engine.log (the console) every N steps (FluxFlow's "
                                    "--log_interval, EveryDream2's log_step); events, the GUI and TensorBoard still "
                                    "get every step.", unit="steps", min=1, max=1_000_000, advanced=True)
    tensorboard: bool = opt(True, "Also write TensorBoard logs into the run folder (runs/<run>/tensorboard/; "
                                  "python -m engine tensorboard shows them).", advanced=True)


@dataclass(frozen=True)
class VaeConfig:
    """training.mode vae (FluxFlow's --train_vae / --gan_training): fine-tune the model's AutoencoderKL."""
    part: str = opt("whole", "whole: encoder and decoder; decoder: only the decoder, so the latents a trained "
                             "denoiser knows stay the same (the safe way to fix washed-out or blurry decodes).",
                    choices=VAE_PARTS)
    reconstruction_loss: str = opt("l1", "Pixel loss between an image and its reconstruction (l1 keeps edges "
                                         "sharper than mse).", choices=RECONSTRUCTION_LOSSES)
    kl_beta: float = opt(1e-4, "Weight of the KL term once warmed up (FluxFlow --kl_beta); the KL is in nats per "
                               "latent value.", min=0.0, max=100.0)
    kl_warmup_steps: int = opt(5000, "Steps over which the KL weight rises linearly from 0 to kl_beta (FluxFlow "
                                     "--kl_warmup_steps).", unit="steps", min=0, max=10_000_000)
    kl_free_bits: float = opt(0.0, "Free bits: a KL below this many nats per latent value costs nothing (FluxFlow "
                                   "--kl_free_bits).", min=0.0, max=100.0, advanced=True)
    gan: bool = opt(False, "Also train a patch discriminator and add its hinge loss (FluxFlow --gan_training): "
                           "sharper detail, slower steps.")
    lambda_adv: float = opt(0.5, "Weight of the adversarial loss (FluxFlow --lambda_adv).", min=0.0, max=100.0)
    test_images: list = opt([], "Images whose reconstructions are the samples, beside the originals (FluxFlow "
                                "--test_image_address); empty: the first validation (else training) images.")


@dataclass(frozen=True)
class RlConfig:
    """training.mode rl: fine-tune the denoiser (its LoRA, or all of it) against a reward, with GRPO or DiffusionNFT
    (the RL guide). Defaults are the guide's; the help gives its recommended range."""
    method: str = opt("grpo", "grpo: PPO-style policy gradient on the sampler's log-probabilities (fast, low memory). "
                              "nft: DiffusionNFT, positive and implicit negative predictions against an old model "
                              "(steadier, one more forward).", choices=RL_METHODS)
    warmup_steps: int = opt(1000, "Supervised steps on the dataset before RL starts (0: RL from the first step; "
                                  "then no dataset is needed). Recommended 500-1000.", unit="steps", min=0,
                            max=10_000_000)
    num_images_per_prompt: int = opt(1, "Images per prompt in one rollout (the group its advantages are relative "
                                        "to). Recommended 4-8.", min=1, max=256)
    num_batches_per_epoch: int = opt(1, "Rollout batches per RL epoch; a batch is training.batch_size prompts x "
                                        "num_images_per_prompt images. Recommended 1-2.", min=1, max=100_000)
    num_inference_steps: int = opt(50, "Sampler steps of a rollout. Recommended 30-50.", unit="steps", min=2,
                                   max=1000)
    guidance_scale: float = opt(3.5, "Classifier-free guidance of the rollouts (FLUX dev: its distilled guidance). "
                                     "Recommended 3.0-4.0.", min=0.0, max=50.0)
    timestep_fraction: float = opt(1.0, "Share of each rollout's steps that train (drawn at random per image). "
                                        "Recommended 0.8-1.0.", min=0.01, max=1.0)
    num_inner_epochs: int = opt(1, "Passes of training over each epoch's rollouts. Recommended 1-3.", min=1,
                                max=100)
    adv_clip_max: float = opt(5.0, "Advantages are clipped to +-this. Recommended 3-10.", min=0.01, max=1000.0)
    per_prompt_stat_tracking: bool = opt(False, "Normalise each reward by its own prompt's history (mean and std), "
                                                "not the whole epoch's (recommended: on).")
    stat_buffer_size: int = opt(32, "Per-prompt statistics: rewards kept per prompt (DDPO's buffer).", min=1,
                                max=100_000, advanced=True)
    stat_min_count: int = opt(16, "Per-prompt statistics: below this many rewards a prompt uses the epoch's "
                                  "statistics.", min=1, max=100_000, advanced=True)
    clip_range: float = opt(0.2, "GRPO: the probability ratio is clipped to 1 +- this. Recommended 0.1-0.3.",
                            min=0.0, max=10.0)
    kl_beta: float = opt(0.1, "Weight of the KL term to the reference (the model without its LoRA). GRPO: default "
                              "0.1, recommended 0.05-0.2; NFT: the guide's 0.01, recommended 0.005-0.02.", min=0.0,
                         max=100.0)
    nft_beta: float = opt(0.5, "NFT: mix of the current model in the positive prediction (0.3-0.5 leans on the old "
                               "model: steadier; 0.7-0.9 on the current one: faster). Recommended 0.3-0.7.",
                          min=0.01, max=1.0)
    adv_mode: str = opt("normal", "NFT: how advantages become the positive weight r: normal, positive_only, "
                                  "negative_only, one_only (r is 0 or 1), binary (the advantage's sign).",
                        choices=NFT_ADV_MODES)
    decay_type: int = opt(0, "NFT: how the old model follows the current one after each RL epoch: 0 fixed (the "
                             "model RL started from); 1 slow (kept share rises 0.001 per step to 0.5, "
                             "recommended); 2 fast (copied for 75 steps, then the kept share rises 0.0075 per step "
                             "to 0.999).", min=0, max=2)
    ddim_eta: float = opt(1.0, "GRPO on SD models: DDIM's eta in the rollouts (must be > 0: the randomness is "
                               "what the policy gradient learns from; 1 as DDPO).", min=0.01, max=1.0,
                          advanced=True)
    sde_noise_level: float = opt(0.7, "GRPO on flow models: the noise of Flow-GRPO's SDE sampler (0.7 as "
                                      "Flow-GRPO).", min=0.01, max=2.0, advanced=True)
    prompts_file: str = opt("", "Prompts to roll out, one per line (# for comments); empty: the dataset's captions.")
    rewards: dict = opt({"jpeg_compressibility": 1.0}, "Rewards and their weights, summed: jpeg_compressibility, "
                                                       "jpeg_incompressibility, brightness, clip_score, aesthetic, "
                                                       "python (rl.reward_file), server (rl.reward_server_url).")
    clip_model_path: str = opt("", "clip_score and aesthetic: a CLIP model folder (transformers layout, e.g. "
                                   "clip-vit-large-patch14).")
    aesthetic_model_path: str = opt("", "aesthetic: the LAION aesthetic predictor's weights (e.g. "
                                        "sac+logos+ava1-l14-linearMSE.pth), on clip_model_path's ViT-L/14.")
    reward_file: str = opt("", "python: a .py file defining reward(images, prompts) -> list of floats (images are "
                               "PIL images).")
    reward_server_url: str = opt("http://127.0.0.1:8765/reward", "server: where the reward server listens. It gets "
                                 "a POST of JSON {images: [base64 PNG], prompts: [...]} and answers {scores: [...]}.")
    reward_server_timeout_s: float = opt(60.0, "server: seconds to wait for an answer.", unit="s", min=0.1,
                                         max=3600.0, advanced=True)
    reward_server_retries: int = opt(3, "server: tries before the run pauses and waits for the server.", min=1,
                                     max=100, advanced=True)


def _defaults(table: dict, kind: str) -> dict:
    return {name: copy.deepcopy(spec[0]) for name, spec in table[kind].items()}


def default_optimizers() -> dict:
    """unet and text_encoder as always; vae and discriminator (training.mode vae) as the FluxFlow guide's
    high-quality VAE example: AdamW 2e-5, betas [0.9, 0.95] for the VAE, [0.0, 0.9] with AMSGrad for the critic."""
    params = _defaults(OPTIMIZER_PARAMS, OptimizerConfig.type)
    return {"unet": OptimizerConfig(params=params), "text_encoder": OptimizerConfig(lr=None, params=dict(params)),
            "vae": OptimizerConfig(lr=2e-5, params={**params, "betas": [0.9, 0.95]}),
            "discriminator": OptimizerConfig(lr=2e-5, params={**params, "betas": [0.0, 0.9], "weight_decay": 0.001,
                                                              "amsgrad": True})}


def default_schedules() -> dict:
    params = _defaults(SCHEDULE_PARAMS, ScheduleConfig.type)
    return {comp: ScheduleConfig(params=dict(params)) for comp in COMPONENTS}


@dataclass(frozen=True)
class Preset:
    version: int = opt(CURRENT_VERSION, "Preset format version (older presets are migrated on load).", min=0,
                       max=CURRENT_VERSION, advanced=True)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizers: dict = field(default_factory=default_optimizers,
                             metadata={"help": "Optimizer per component: unet (UNet or transformer; also written "
                                               "transformer or flow), text_encoder, vae and discriminator "
                                               "(training.mode vae).",
                                       "item": OptimizerConfig, "keys": COMPONENTS})
    schedules: dict = field(default_factory=default_schedules,
                            metadata={"help": "Learning-rate schedule per component.",
                                      "item": ScheduleConfig, "keys": COMPONENTS})
    vae: VaeConfig = field(default_factory=VaeConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
