"""The family record and the loaded components it works on.

A family is data plus a few functions; nothing subclasses anything. The trainer only ever calls:
    load(model_cfg, dtype, device) -> Components
    encode_text(comps, captions: list[str]) -> cond: dict[str, Tensor]   (every tensor has the batch dim first)
    encode_image(comps, pixels [B,3,H,W] in [-1,1]) -> latents [B,C,H/8,W/8] (scaled for the denoiser)
    predict(comps, x_t, t [B] in [0,1], cond, size_cond [B,6]) -> prediction shaped like x_t
    pipeline(comps) -> the diffusers pipeline (sharing the trained modules) for samples and the LoRA self-check
`size_cond` is (original_h, original_w, crop_top, crop_left, target_h, target_w) per image: SDXL conditions on it,
the others ignore it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Components:
    """The loaded model. `denoiser` is the UNet (or a transformer); text_encoders/tokenizers in the pipeline's order."""

    pipe: Any
    denoiser: Any
    vae: Any
    text_encoders: tuple
    tokenizers: tuple
    prediction_type: str                 # epsilon | v_prediction | flow, after model.prediction_type
    alphas_cumprod: Any = None           # [N] tensor for DDPM models, None for flow models
    vae_dtype: Any = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str                  # diffusers class name, e.g. StableDiffusionPipeline
    default_resolution_px: int
    lora_targets: tuple                  # denoiser module names that get LoRA layers by default
    te_lora_targets: tuple               # text-encoder module names
    text_encoder_names: tuple            # the pipeline's text-encoder attribute names, in order
    # LoRA metadata as sd-scripts writes it, by the resolved prediction type ("epsilon" is the fallback):
    kohya_base_model: dict               # ss_base_model_version, e.g. {"epsilon": "sd_v2", "v_prediction": "sd_v2_v"}
    modelspec_architecture: dict         # modelspec.architecture, e.g. stable-diffusion-v2-768-v/lora for a v model
    vae_fp32: bool                       # the family's VAE overflows in fp16 (SDXL): keep it in fp32
    load: Callable
    encode_text: Callable
    encode_image: Callable
    predict: Callable
    pipeline: Callable
    metadata: dict = field(default_factory=dict)  # extra ss_* / modelspec.* strings (e.g. ss_v2)
    # kohya LoRA UNet module names as sd-scripts writes them for this family: "diffusers" paths (SD1.x/SD2, whose
    # sd-scripts UNet copies the diffusers layout) or the original "ldm" ones (SDXL: input_blocks/middle_block/...)
    kohya_unet_names: str = "diffusers"
    modelspec_implementation: str = "diffusers"   # what sd-scripts writes: "diffusers" for SD1.x/SD2 LoRAs
    # (denoiser, network config) -> full module paths of the LoRA targets, for denoisers whose targets are not simple
    # name suffixes (FLUX: the block linears, not the embedders'); None: lora_targets / network.targets as suffixes
    lora_target_names: Callable | None = None
    trained_text_encoders: int | None = None     # how many of text_encoders can train (FLUX: CLIP-L, never T5); None: all
    latent_multiple_px: int = 8                  # image sides must be multiples of this (FLUX packs 2x2 latents: 16)
    # its pipeline takes encode_text's output for samples (prompt_embeds + pooled_prompt_embeds, no negative prompt),
    # so frozen text encoders stay in CPU RAM while sampling (FLUX's T5 would not fit beside the transformer)
    cached_sample_prompts: bool = False
    writes_prediction_type: bool = True          # modelspec.prediction_type in LoRA headers (sd-scripts writes none for FLUX)
    # no diffusers pipeline for samples (the DiT trained from scratch): engine/sampling/scratch.py samples `predict`
    # with the ODE / DDIM samplers instead; configure(comps, training) takes the objective from the preset
    scratch_sampler: bool = False
    configure: Callable | None = None
    decode_image: Callable | None = None         # scratch_sampler: (comps, x0 the model's space) -> pixels [-1, 1]


def by_prediction(table: dict, *keys: str) -> str:
    """A family's metadata value for the first of `keys` it has (the model's variant, its resolved prediction
    type); else its first entry (epsilon for the SD families)."""
    return next((table[k] for k in keys if k in table), next(iter(table.values())))
