"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, a UNet on 4-channel latents, a DDPM noise schedule.

SD2 is SD1 with other data: 768 px, v-prediction (read from the scheduler config; model.prediction_type overrides).
"""
from __future__ import annotations

import dataclasses

import torch

from engine.models.families.base import Components, Family
from engine.models.families.sd.caps import CAPABILITIES
from engine.models.families.sd.ldm_convert import unet_module_to_ldm
from engine.models.lora_naming import KohyaNaming
from engine.models.loading import load_pipeline, load_vae

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def resolve_prediction_type(scheduler_config, requested: str, flow: bool = False) -> str:
    """model.prediction_type, or (auto) what the model's scheduler config says; SD models default to epsilon.
    flow: the folder ships a FlowMatch scheduler (a UNet Easel trained as a rectified flow)."""
    if requested and requested != "auto":
        return requested
    if flow:
        return "flow"
    return scheduler_config.get("prediction_type", "epsilon") or "epsilon"


def alphas_cumprod_of(scheduler) -> torch.Tensor:
    """The model's training noise schedule [N], whatever inference scheduler the folder ships."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config).alphas_cumprod.clone()


def components_from_pipe(pipe, model_cfg, text_encoders, tokenizers, vae_fp32: bool) -> Components:
    """Components of a loaded SD/SDXL pipeline; the scheduler is told the resolved prediction type so samples match."""
    from engine.models.unet_flow import as_unet_flow_scheduler, is_flow_scheduler

    flow = is_flow_scheduler(pipe.scheduler)
    prediction_type = resolve_prediction_type(pipe.scheduler.config, model_cfg.prediction_type, flow)
    if flow:
        as_unet_flow_scheduler(pipe.scheduler)
    elif pipe.scheduler.config.get("prediction_type") != prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
    vae = load_vae(model_cfg, pipe.vae.dtype)
    if vae is not None:
        pipe.vae = vae
    if vae_fp32 and pipe.vae.dtype != torch.float32:
        pipe.vae.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return Components(pipe=pipe, denoiser=pipe.unet, vae=pipe.vae, text_encoders=text_encoders, tokenizers=tokenizers,
                      prediction_type=prediction_type, alphas_cumprod=alphas_cumprod_of(pipe.scheduler),
                      vae_dtype=pipe.vae.dtype)


def load(model_cfg, dtype, device, progress=None) -> Components:
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(StableDiffusionPipeline, model_cfg, dtype, safety_checker=None,
                         requires_safety_checker=False, feature_extractor=None)
    pipe.to(device)
    return components_from_pipe(pipe, model_cfg, (pipe.text_encoder,), (pipe.tokenizer,), vae_fp32=False)


def tokenize(tokenizer, captions: list[str], device) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def encode_text(comps: Components, captions: list[str]) -> dict:
    """{"prompt_embeds": [B, 77, C]}: the last hidden state of CLIP, as the SD pipelines use it."""
    encoder = comps.text_encoders[0]
    ids = tokenize(comps.tokenizers[0], captions, encoder.device)
    return {"prompt_embeds": encoder(ids)[0]}


def encode_image(comps: Components, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B, 3, H, W] in [-1, 1] -> scaled latents [B, 4, H/8, W/8]. The distribution's mode, so a cached
    latent is the same every run (and a resumed run sees the same data)."""
    vae = comps.vae
    latents = vae.encode(pixels.to(vae.device, comps.vae_dtype)).latent_dist.mode()
    shift = vae.config.get("shift_factor") or 0.0
    return (latents - shift) * vae.config.scaling_factor


def unet_timestep(comps: Components, t: torch.Tensor) -> torch.Tensor:
    """t in [0, 1] -> the UNet's integer timestep (the objectives' grid: t = k / (N - 1))."""
    n = len(comps.alphas_cumprod)
    return torch.round(t * (n - 1)).long()


def predict(comps: Components, x_t, t, cond: dict, size_cond) -> torch.Tensor:
    unet = comps.denoiser
    return unet(x_t, unet_timestep(comps, t), cond["prompt_embeds"], return_dict=False)[0]


def pipeline(comps: Components):
    return comps.pipe


def is_sdxl_unet(denoiser) -> bool:
    return "UNet" in type(denoiser).__name__ and denoiser.config.get("addition_embed_type") == "text_time"


# sd-scripts' SD1.x/SD2 UNet copies the diffusers layout, so its LoRA names are diffusers paths; loaders also take
# the LDM names (the alias)
KOHYA_NAMING = KohyaNaming(ldm_alias=unet_module_to_ldm,
                           owns=lambda d: "UNet" in type(d).__name__ and not is_sdxl_unet(d))


SD15 = Family(
    name="sd15", caps=CAPABILITIES["sd15"], lora_targets=UNET_ATTENTION, te_lora_targets=CLIP_ATTENTION,
    text_encoder_names=("text_encoder",), kohya_base_model={"epsilon": "sd_v1", "v_prediction": "sd_v1_v"},
    modelspec_architecture={"epsilon": "stable-diffusion-v1/lora"},
    load=load, encode_text=encode_text, encode_image=encode_image, predict=predict, pipeline=pipeline,
    metadata={"ss_v2": "False"}, kohya_naming=KOHYA_NAMING,
)

SD2 = dataclasses.replace(  # a 512 px epsilon SD2 (2.0-base, 2.1-base) is named apart from the 768 px v models
    SD15, name="sd2", caps=CAPABILITIES["sd2"], kohya_base_model={"epsilon": "sd_v2", "v_prediction": "sd_v2_v"},
    modelspec_architecture={"epsilon": "stable-diffusion-v2-512/lora",
                            "v_prediction": "stable-diffusion-v2-768-v/lora"},
    metadata={"ss_v2": "True"},
)

RECORDS = {f.name: f for f in (SD15, SD2)}
