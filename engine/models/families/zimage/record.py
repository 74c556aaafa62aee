"""Z-Image (base, Turbo, de-distilled Turbo): Tongyi-MAI's single-stream DiT over FLUX.1's AE latents in 2x2
patches, conditioned on Qwen3-4B's second-to-last hidden states of the chat-templated caption (padding dropped).
Loading (a diffusers folder, a Hub id, or the files a ComfyUI user has) is zimage/loading.py; samples on a distilled
sibling (model.preview_path) are zimage/preview.py.

Time and sign, as ZImagePipeline drives the transformer: it takes 1 - t (t = Easel's noise level in [0, 1]; it
scales by 1000 itself) and returns x0 - noise, the negative of Easel's velocity. Its inputs are lists, one [C, 1,
H, W] latent and one [L_i, D] caption per sample (the frames axis is Z-Image's, always 1 for images).
"""
from __future__ import annotations

import re

import torch

from engine.models.families.base import Components, Family
from engine.models.families.sd.record import encode_image
from engine.models.families.zimage.caps import CAPABILITIES, variant_of
from engine.models.families.zimage.preview import PREVIEW_GUIDANCE, PREVIEW_STEPS, preview_pipeline
from engine.models.lora import block_linear_targets
from engine.models.lora_naming import KohyaNaming

TEXT_TOKENS = 512  # ZImagePipeline's max_sequence_length: the caption's tokens after the chat template

# The linears of every block (the two refiner stacks and the 30 main layers) that get LoRA layers by default:
# attention and the SwiGLU feed-forward, as musubi-tuner's lora_zimage and diffusers' Z-Image LoRA script target;
# the adaLN modulation only with network.lora_modulation.
BLOCK_LINEARS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w1",
                 "feed_forward.w2", "feed_forward.w3")
MODULATION_LINEARS = ("adaLN_modulation.0",)
_BLOCK_LISTS = CAPABILITIES["zimage"].block_lists  # noise_refiner, context_refiner, layers
_BLOCK = re.compile(rf"^({'|'.join(_BLOCK_LISTS)})\.\d+\.(.+)$")

# What ComfyUI loads (comfy/lora.py model_lora_keys_unet, its Lumina2 / Z-Image branch over
# comfy.utils.z_image_to_diffusers): diffusers' module paths under `diffusion_model.`, which it maps onto its fused
# qkv by row slices; sd-scripts-style flat names (lora_unet_layers_0_attention_to_q) are not in that map.
# diffusers' ZImagePipeline reads the same names (_convert_non_diffusers_z_image_lora_to_diffusers), alpha included.
KOHYA_NAMING = KohyaNaming(prefixes={"transformer": "diffusion_model"}, joiner=".",
                           owns=lambda d: hasattr(d, "noise_refiner") and hasattr(d, "context_refiner"))
# what musubi-tuner writes in a Z-Image LoRA's header (library sai_model_spec: ARCH_Z_IMAGE)
ARCHITECTURE = {"base": "Z-Image/lora", "turbo": "Z-Image-Turbo/lora"}
IMPLEMENTATION = "https://github.com/Tongyi-MAI/Z-Image"


def lora_target_names(denoiser, network) -> list[str]:
    """Full module paths of the transformer's LoRA targets. network.targets, when set, are module-name suffixes
    (e.g. to_q, to_k, to_v, to_out.0 for attention only) matched inside the blocks."""
    wanted = BLOCK_LINEARS + (MODULATION_LINEARS if network.lora_modulation else ())
    return block_linear_targets(denoiser, _BLOCK, dict.fromkeys(_BLOCK_LISTS, wanted), network.targets)


def load(model_cfg, dtype, device, progress=None) -> Components:
    from engine.models.families.zimage.loading import load_zimage_pipeline

    pipe = load_zimage_pipeline(model_cfg, dtype, progress or (lambda text, n, total: None))
    pipe.set_progress_bar_config(disable=True)
    # Everything stays in CPU RAM here: setup moves each part to the GPU only while it is needed (Qwen3 while
    # captions are cached, the VAE while latents are), so a 12 GB card never holds Qwen3 and the transformer at once.
    return Components(pipe=pipe, denoiser=pipe.transformer, vae=pipe.vae, text_encoders=(pipe.text_encoder,),
                      tokenizers=(pipe.tokenizer,), prediction_type="flow", alphas_cumprod=None,
                      vae_dtype=pipe.vae.dtype, extra={"variant": variant_of(model_cfg),
                                                       "max_sequence_length": TEXT_TOKENS})


def encode_text(comps: Components, captions: list[str]) -> dict:
    """{"prompt_embeds": [B, L, D] Qwen3's second-to-last hidden states, "prompt_mask": [B, L] the caption's tokens}
    with L = the padded length, so cached captions stack into batches; predict drops the padding again."""
    encoder, tokenizer = comps.text_encoders[0], comps.tokenizers[0]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=True) for c in captions]
    tokens = tokenizer(texts, padding="max_length", max_length=comps.extra["max_sequence_length"], truncation=True,
                       return_tensors="pt")
    ids, mask = tokens.input_ids.to(encoder.device), tokens.attention_mask.to(encoder.device).bool()
    states = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return {"prompt_embeds": states, "prompt_mask": mask}


def captions_of(cond: dict) -> list[torch.Tensor]:
    """The batch's caption states without their padding: one [L_i, D] per sample, as the transformer takes them."""
    return [states[mask.bool()] for states, mask in zip(cond["prompt_embeds"], cond["prompt_mask"])]


def predict(comps: Components, x_t, t, cond: dict, size_cond) -> torch.Tensor:
    """The velocity (noise - x0) at x_t [B, C, h, w], noise level t [B]."""
    latents = list(x_t.unsqueeze(2).unbind(0))
    out = comps.denoiser(latents, (1 - t).to(x_t.dtype), captions_of(cond), return_dict=False)[0]
    return -torch.stack(out).squeeze(2)


def pipeline(comps: Components):
    return comps.pipe


def sample_kwargs(cond: dict, negative, device) -> dict:
    """A prompt encoded ahead as ZImagePipeline takes it: lists of unpadded states (the negative prompt's for the
    classifier-free pass)."""
    batch = lambda c: [s.to(device) for s in captions_of({k: v[None] for k, v in c.items()})]  # noqa: E731
    return {"prompt_embeds": batch(cond), "negative_prompt_embeds": batch(negative) if negative else None}


def pipeline_guidance(cfg: float) -> float:
    """Classifier-free guidance as ComfyUI and A1111 mean it (uncond + w (cond - uncond); 1 = none) -> ZImagePipeline's
    guidance_scale, which computes cond + g (cond - uncond): g = w - 1 (0 turns the second pass off)."""
    return max(cfg - 1.0, 0.0)


ZIMAGE = Family(
    name="zimage", caps=CAPABILITIES["zimage"], lora_targets=BLOCK_LINEARS, te_lora_targets=(),
    text_encoder_names=("text_encoder",), kohya_base_model={"flow": "z_image"}, modelspec_architecture=ARCHITECTURE,
    load=load, encode_text=encode_text, encode_image=encode_image, predict=predict, pipeline=pipeline,
    kohya_naming=KOHYA_NAMING, modelspec_implementation=IMPLEMENTATION, writes_prediction_type=False,
    lora_target_names=lora_target_names, cached_sample_prompts=True, sample_kwargs=sample_kwargs,
    preview_pipeline=preview_pipeline, preview_sampling=(PREVIEW_STEPS, PREVIEW_GUIDANCE),
    pipeline_guidance=pipeline_guidance,
)

RECORDS = {"zimage": ZIMAGE}
