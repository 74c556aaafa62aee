"""network and training: what is trained (LoRA or full, text encoder policy) and how (steps, batch, precision,
objective and noise levels, EMA, caches, reflow)."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.config.schema.choices import (BETA_SCHEDULES, FLOW_PATHS, OBJECTIVES, TIMESTEP_SAMPLING,
                                          TRAINING_MODES, TRAINING_PRECISIONS)
from engine.config.schema.field_meta import opt


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
