"""FLUX.2 klein (base 4B / 9B; the distilled klein for previews): a FLUX-style transformer (double-stream blocks,
then single-stream blocks with fused q/k/v + MLP projections, modulation shared by all blocks of a kind) over the
32-channel FLUX.2 AE's latents cut into 2x2 patches and batch-normalized (128 channels per token), conditioned on
Qwen3's hidden states 9, 18 and 27 of the chat-templated caption, stacked along the width. Loading (a diffusers
folder, a Hub id, or the files a ComfyUI user has) is flux2/loading.py; the distilled klein's previews
flux2/preview.py.

Time and shapes, as Flux2KleinPipeline drives the transformer: it takes the noise level t in [0, 1] (Easel's flow
time) and returns the velocity (noise - x0); the latents Easel trains on are the patchified, normalized ones
[B, 4C, H/16, W/16], packed into tokens [B, (H/16)(W/16), 4C] with 4-D positions (0, row, column, 0); the text
is all 512 padded positions (the pipeline passes no mask), positions (0, 0, 0, i).
"""
from __future__ import annotations

import re

import torch

from engine.models.families.base import Components, Family
from engine.models.families.flux2.caps import CAPABILITIES
from engine.models.families.flux2.preview import PREVIEW_GUIDANCE, PREVIEW_STEPS, preview_pipeline
from engine.models.lora import block_linear_targets

TEXT_TOKENS = 512              # Flux2KleinPipeline's max_sequence_length
LAYERS_READ = (9, 18, 27)      # its text_encoder_out_layers

# Every linear of both block kinds: attention q/k/v/out of each stream and their MLPs in the double blocks; the
# fused q/k/v+MLP input and the attention+MLP output of the single blocks (the single-stream out-projection matters:
# unsloth PR #8267). The shared modulation layers sit outside the blocks and stay frozen.
DOUBLE_BLOCK_LINEARS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                        "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out",
                        "ff_context.linear_in", "ff_context.linear_out")
SINGLE_BLOCK_LINEARS = ("attn.to_qkv_mlp_proj", "attn.to_out")
WANTED = {"transformer_blocks": DOUBLE_BLOCK_LINEARS, "single_transformer_blocks": SINGLE_BLOCK_LINEARS}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.(.+)$")


def lora_target_names(denoiser, network) -> list[str]:
    """Full module paths of the transformer's LoRA targets (network.targets, when set: module-name suffixes)."""
    return block_linear_targets(denoiser, _BLOCK, WANTED, network.targets)


def variant_of(pipe) -> str:
    """"4b" or "9b" (its width; "" for another, the tiny test model): what its LoRA files' metadata says."""
    from engine.models.families.flux2.lora_names import size_of

    return size_of(pipe.transformer) or ""


def load(model_cfg, dtype, device, progress=None) -> Components:
    from engine.models.families.flux2.loading import load_flux2_pipeline

    pipe = load_flux2_pipeline(model_cfg, dtype, progress or (lambda text, n, total: None))
    pipe.set_progress_bar_config(disable=True)
    # everything stays in CPU RAM: setup moves Qwen3 to the GPU only while captions are cached, then the transformer
    return Components(pipe=pipe, denoiser=pipe.transformer, vae=pipe.vae, text_encoders=(pipe.text_encoder,),
                      tokenizers=(pipe.tokenizer,), prediction_type="flow", alphas_cumprod=None,
                      vae_dtype=pipe.vae.dtype, extra={"variant": variant_of(pipe), "max_sequence_length": TEXT_TOKENS,
                                                       "distilled": bool(pipe.config.get("is_distilled", False))})


def encode_text(comps: Components, captions: list[str]) -> dict:
    """{"prompt_embeds": [B, L, 3 x Qwen3 width]}, exactly as Flux2KleinPipeline encodes a prompt."""
    from diffusers import Flux2KleinPipeline

    # the bare Qwen3Model inside the causal LM: the same hidden states without the vocabulary logits the LM head
    # would compute for every token (2.3 GB for 16 captions of 512 tokens)
    encoder = getattr(comps.text_encoders[0], "model", comps.text_encoders[0])
    embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(
        encoder, comps.tokenizers[0], list(captions), dtype=_compute_dtype(encoder),
        device=encoder.device, max_sequence_length=comps.extra["max_sequence_length"], hidden_states_layers=LAYERS_READ)
    return {"prompt_embeds": embeds}


def _compute_dtype(module) -> torch.dtype:
    """The dtype a module computes in: its first weight wider than one byte (model.text_encoder_fp8 keeps the
    linears in float8, cast up for each forward)."""
    return next(p.dtype for p in module.parameters() if p.dtype.is_floating_point and p.element_size() > 1)


def encode_image(comps: Components, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B, 3, H, W] in [-1, 1] -> [B, 4C, H/16, W/16]: the AE's mode, cut into 2x2 patches and normalized by
    the AE's batch-norm statistics, as Flux2KleinPipeline prepares image latents."""
    from diffusers import Flux2KleinPipeline

    vae = comps.vae
    latents = vae.encode(pixels.to(vae.device, comps.vae_dtype)).latent_dist.mode()
    latents = Flux2KleinPipeline._patchify_latents(latents)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents)
    return (latents - mean) / std


def predict(comps: Components, x_t, t, cond: dict, size_cond) -> torch.Tensor:
    """The velocity (noise - x0) at x_t [B, C, h, w], noise level t [B]."""
    from diffusers import Flux2KleinPipeline

    b, c, h, w = x_t.shape
    text = cond["prompt_embeds"]
    out = comps.denoiser(hidden_states=Flux2KleinPipeline._pack_latents(x_t), encoder_hidden_states=text,
                         timestep=t.to(x_t.dtype), img_ids=Flux2KleinPipeline._prepare_latent_ids(x_t).to(x_t.device),
                         txt_ids=Flux2KleinPipeline._prepare_text_ids(text).to(x_t.device), guidance=None,
                         return_dict=False)[0]
    return out.permute(0, 2, 1).reshape(b, c, h, w)


def pipeline(comps: Components):
    return comps.pipe


def sample_kwargs(cond: dict, negative, device) -> dict:
    """A prompt encoded ahead as Flux2KleinPipeline takes it (the negative one for the base's guidance)."""
    out = {"prompt_embeds": cond["prompt_embeds"][None].to(device)}
    if negative:
        out["negative_prompt_embeds"] = negative["prompt_embeds"][None].to(device)
    return out


def _naming():
    from engine.models.families.flux2 import lora_names

    return lora_names


FLUX2 = Family(
    name="flux2", caps=CAPABILITIES["flux2"], lora_targets=DOUBLE_BLOCK_LINEARS + SINGLE_BLOCK_LINEARS,
    te_lora_targets=(), text_encoder_names=("text_encoder",),
    kohya_base_model=_naming().BASE_MODEL_VERSION, modelspec_architecture=_naming().ARCHITECTURE,
    load=load, encode_text=encode_text, encode_image=encode_image, predict=predict, pipeline=pipeline,
    kohya_naming=_naming().KOHYA_NAMING, modelspec_implementation=_naming().IMPLEMENTATION,
    writes_prediction_type=False, lora_target_names=lora_target_names, cached_sample_prompts=True,
    sample_kwargs=sample_kwargs, preview_pipeline=preview_pipeline,
    preview_sampling=(PREVIEW_STEPS, PREVIEW_GUIDANCE),
)

RECORDS = {"flux2": FLUX2}
