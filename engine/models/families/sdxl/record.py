"""SDXL: two CLIP text encoders (penultimate hidden states concatenated; pooled output of the second), a UNet that
also conditions on the image's original size, crop and target size (the `size_cond` of each sample), and a VAE
that overflows in fp16 (kept in fp32)."""
from __future__ import annotations

import torch

from engine.models.families.base import Components, Family
from engine.models.families.sdxl.caps import CAPABILITIES
from engine.models.families.sd.ldm_convert import unet_module_to_ldm
from engine.models.families.sd.record import CLIP_ATTENTION, UNET_ATTENTION, components_from_pipe, encode_image, \
    is_sdxl_unet, pipeline, tokenize, unet_timestep
from engine.models.lora_naming import KohyaNaming

# sd-scripts names SDXL's UNet modules by the original input_blocks/middle_block/output_blocks (LDM) layout;
# loaders also take the diffusers paths (older Easel files wrote them)
KOHYA_NAMING = KohyaNaming(unet_style="ldm", ldm_alias=unet_module_to_ldm, owns=is_sdxl_unet)


def load(model_cfg, dtype, device, progress=None) -> Components:
    from diffusers import StableDiffusionXLPipeline

    from engine.models.loading import load_pipeline

    pipe = load_pipeline(StableDiffusionXLPipeline, model_cfg, dtype)
    pipe.to(device)
    return components_from_pipe(pipe, model_cfg, (pipe.text_encoder, pipe.text_encoder_2),
                                (pipe.tokenizer, pipe.tokenizer_2), vae_fp32=True)


def encode_text(comps: Components, captions: list[str]) -> dict:
    """{"prompt_embeds": [B, 77, C1 + C2], "pooled": [B, P]} as StableDiffusionXLPipeline.encode_prompt builds them."""
    hidden, pooled = [], None
    for tokenizer, encoder in zip(comps.tokenizers, comps.text_encoders):
        out = encoder(tokenize(tokenizer, captions, encoder.device), output_hidden_states=True)
        pooled = out[0]  # the last encoder's projected pooled output (text_embeds)
        hidden.append(out.hidden_states[-2])
    return {"prompt_embeds": torch.cat(hidden, dim=-1), "pooled": pooled}


def predict(comps: Components, x_t, t, cond: dict, size_cond) -> torch.Tensor:
    unet = comps.denoiser
    added = {"text_embeds": cond["pooled"], "time_ids": size_cond.to(x_t.device, cond["pooled"].dtype)}
    return unet(x_t, unet_timestep(comps, t), cond["prompt_embeds"], added_cond_kwargs=added, return_dict=False)[0]


SDXL = Family(
    name="sdxl", caps=CAPABILITIES["sdxl"], lora_targets=UNET_ATTENTION, te_lora_targets=CLIP_ATTENTION,
    text_encoder_names=("text_encoder", "text_encoder_2"), kohya_base_model={"epsilon": "sdxl_base_v1-0"},
    modelspec_architecture={"epsilon": "stable-diffusion-xl-v1-base/lora"},
    load=load, encode_text=encode_text, encode_image=encode_image, predict=predict, pipeline=pipeline,
    metadata={"ss_v2": "False"}, kohya_naming=KOHYA_NAMING,
    modelspec_implementation="https://github.com/Stability-AI/generative-models",
)

RECORDS = {"sdxl": SDXL}
