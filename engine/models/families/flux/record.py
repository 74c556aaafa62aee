"""FLUX.1 (dev and schnell): a rectified-flow transformer over 2x2-packed 16-channel latents, conditioned on T5-XXL
hidden states (the sequence), CLIP-L's pooled output (the vector), the timestep and, for dev, a distilled guidance
value. Loading (a diffusers folder, a Hub id, or the single files a ComfyUI user has) is flux/loading.py.

Shapes: latents [B, C, H/8, W/8] -> packed tokens [B, (H/16)(W/16), 4C]; positions `img_ids` [(H/16)(W/16), 3]
(0, row, column) and `txt_ids` [L, 3] (zeros), as FluxPipeline builds them. The transformer takes the noise level
t in [0, 1] (it scales by 1000 itself) — Easel's flow time, so no conversion.
"""
from __future__ import annotations

import re

import torch

from engine.models.families.flux import lora_names
from engine.models.families.base import Components, Family
from engine.models.families.flux.caps import CAPABILITIES
from engine.models.lora import block_linear_targets
from engine.models.lora_naming import KohyaNaming
from engine.models.families.sd.record import CLIP_ATTENTION, encode_image, pipeline, tokenize

T5_TOKENS = {"dev": 512, "schnell": 256}  # the models' own max_sequence_length (BFL's reference code)

# The linears of each block that get LoRA layers by default: attention, the text stream's projections, the MLPs
# (sd-scripts' lora_flux and ai-toolkit target the same set); modulation only with network.lora_modulation.
DOUBLE_BLOCK_LINEARS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                        "ff_context.net.2")
SINGLE_BLOCK_LINEARS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")
MODULATION_LINEARS = {"transformer_blocks": ("norm1.linear", "norm1_context.linear"),
                      "single_transformer_blocks": ("norm.linear",)}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.(.+)$")


# sd-scripts' FLUX LoRAs: BFL's module names, whose q/k/v (and single blocks' linear1) fuse several diffusers layers
KOHYA_NAMING = KohyaNaming(prefixes=lora_names.PREFIXES, fused=lora_names, network_module=lora_names.NETWORK_MODULE,
                           owns=lora_names.is_flux_transformer)


def lora_target_names(denoiser, network) -> list[str]:
    """Full module paths of the transformer's LoRA targets. network.targets, when set, are module-name suffixes
    (e.g. to_q, to_k, to_v, to_out.0 for attention only) matched inside the blocks."""
    wanted = {"transformer_blocks": DOUBLE_BLOCK_LINEARS, "single_transformer_blocks": SINGLE_BLOCK_LINEARS}
    if network.lora_modulation:
        wanted = {k: v + MODULATION_LINEARS[k] for k, v in wanted.items()}
    return block_linear_targets(denoiser, _BLOCK, wanted, network.targets)


def load(model_cfg, dtype, device, progress=None) -> Components:
    from engine.models.families.flux.loading import load_flux_pipeline

    pipe = load_flux_pipeline(model_cfg, dtype, progress or (lambda text, n, total: None))
    pipe.set_progress_bar_config(disable=True)
    variant = "dev" if pipe.transformer.config.guidance_embeds else "schnell"
    # Everything stays in CPU RAM here: setup moves each part to the GPU only while it is needed (the text
    # encoders while captions are cached, the VAE while latents are), so a 12 GB card never holds T5 and the
    # transformer at once.
    return Components(pipe=pipe, denoiser=pipe.transformer, vae=pipe.vae,
                      text_encoders=(pipe.text_encoder, pipe.text_encoder_2),
                      tokenizers=(pipe.tokenizer, pipe.tokenizer_2), prediction_type="flow", alphas_cumprod=None,
                      vae_dtype=pipe.vae.dtype, extra={"variant": variant, "guidance_scale": 1.0,
                                                       "max_sequence_length": T5_TOKENS[variant]})


def encode_text(comps: Components, captions: list[str]) -> dict:
    """{"prompt_embeds": [B, L, 4096] T5 hidden states, "pooled": [B, 768] CLIP-L pooled output}."""
    clip, t5 = comps.text_encoders
    clip_ids = tokenize(comps.tokenizers[0], captions, clip.device)
    pooled = clip(clip_ids, output_hidden_states=False).pooler_output
    length = comps.extra["max_sequence_length"]
    t5_ids = comps.tokenizers[1](captions, padding="max_length", max_length=length, truncation=True,
                                 return_tensors="pt").input_ids.to(t5.device)
    return {"prompt_embeds": t5(t5_ids, output_hidden_states=False)[0], "pooled": pooled}


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: each 2x2 patch of latents is one token (FluxPipeline._pack_latents)."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of pack for latents of height h and width w."""
    b, n, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """[(h/2)(w/2), 3] token positions (0, row, column) for latents h x w."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)


def predict(comps: Components, x_t, t, cond: dict, size_cond) -> torch.Tensor:
    """The velocity (noise - x0) at x_t [B, C, h, w], noise level t [B]."""
    transformer = comps.denoiser
    b, _, h, w = x_t.shape
    dtype = cond["prompt_embeds"].dtype
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((b,), comps.extra["guidance_scale"], device=x_t.device, dtype=torch.float32)
    out = transformer(hidden_states=pack(x_t), timestep=t.to(x_t.dtype), guidance=guidance,
                      pooled_projections=cond["pooled"], encoder_hidden_states=cond["prompt_embeds"],
                      txt_ids=torch.zeros(cond["prompt_embeds"].shape[1], 3, device=x_t.device, dtype=dtype),
                      img_ids=image_ids(h, w, x_t.device, dtype), return_dict=False)[0]
    return unpack(out, h, w)


def sample_kwargs(cond: dict, negative, device) -> dict:
    """A prompt encoded ahead as FluxPipeline takes it (dev's guidance is embedded: no negative prompt)."""
    return {"prompt_embeds": cond["prompt_embeds"][None].to(device),
            "pooled_prompt_embeds": cond["pooled"][None].to(device)}


FLUX = Family(
    name="flux", caps=CAPABILITIES["flux"], lora_targets=DOUBLE_BLOCK_LINEARS, te_lora_targets=CLIP_ATTENTION,
    text_encoder_names=("text_encoder", "text_encoder_2"),
    kohya_base_model={"flow": lora_names.BASE_MODEL_VERSION}, modelspec_architecture=lora_names.ARCHITECTURE,
    load=load, encode_text=encode_text, encode_image=encode_image, predict=predict, pipeline=pipeline,
    kohya_naming=KOHYA_NAMING, modelspec_implementation=lora_names.IMPLEMENTATION, writes_prediction_type=False,
    lora_target_names=lora_target_names, cached_sample_prompts=True, sample_kwargs=sample_kwargs,
)

RECORDS = {"flux": FLUX}
