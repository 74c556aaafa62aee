"""Chroma (lodestones' Chroma1-HD / Chroma1-Base): FLUX.1-schnell trimmed to 8.9B, conditioned on T5-XXL alone, with
T5's attention mask, over FLUX.1's AE latents packed 2x2. Loading (a diffusers folder, a Hub id, or the files a
ComfyUI user has) is chroma/loading.py.

Shapes and time are FLUX's (flux/record.py): latents [B, C, H/8, W/8] -> packed tokens [B, (H/16)(W/16), 4C],
positions img_ids / txt_ids, the noise level t in [0, 1] as the transformer takes it, the velocity (noise - x0) out.

The text: T5 reads the caption with its attention mask; the transformer attends to the caption's tokens and the one
padding token after them, nothing further (how Chroma was trained: ChromaPipeline, sd-scripts' --apply_t5_attn_mask,
ComfyUI). encode_text keeps the states padded to a fixed length with their mask, so cached captions stack into
batches; predict cuts them to the longest attended length of the batch (exact: text tokens all sit at position 0,
and masked tokens change nothing), so a batch of one needs no mask at all, and masks a batch's shorter captions with
a boolean mask. Boolean, not ChromaPipeline's float 0/1 mask: scaled_dot_product_attention adds a float mask to the
scores instead of masking (diffusers issues #12116, #13619), which would let every padding token in.
"""
from __future__ import annotations

import contextlib
import re

import torch

from engine.models.families.base import Components, Family
from engine.models.families.chroma.caps import CAPABILITIES
from engine.models.families.flux.record import DOUBLE_BLOCK_LINEARS, SINGLE_BLOCK_LINEARS, image_ids, pack, unpack
from engine.models.families.flux.record import KOHYA_NAMING as FLUX_NAMING
from engine.models.families.sd.record import encode_image, pipeline
from engine.models.lora import block_linear_targets

T5_TOKENS = 512  # ChromaPipeline's max_sequence_length, and sd-scripts' for Chroma (it is no schnell)

# Every Linear inside the blocks: attention, the text stream's projections, the MLPs. FLUX's default set, which for
# Chroma is all of them: its blocks have no modulation linears (distilled_guidance_layer computes the modulation).
BLOCK_LINEARS = DOUBLE_BLOCK_LINEARS + tuple(s for s in SINGLE_BLOCK_LINEARS if s not in DOUBLE_BLOCK_LINEARS)
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.(.+)$")

# ComfyUI's Chroma is a subclass of its Flux model (comfy/model_base.py `class Chroma(Flux)`), so comfy/lora.py
# model_lora_keys_unet maps Chroma's LoRA keys as FLUX.1's: lora_unet_ + BFL names, fused q/k/v as row slices
# (comfy.utils.flux_to_diffusers); ChromaPipeline reads kohya files through FLUX's converter (FluxLoraLoaderMixin);
# sd-scripts' --model_type chroma writes them with networks.lora_flux. So FLUX's naming is shared on purpose: it
# owns any transformer with transformer_blocks and single_transformer_blocks, ChromaTransformer2DModel included.
KOHYA_NAMING = FLUX_NAMING

# What sd-scripts writes in a Chroma LoRA's header (flux_train_network.py --model_type chroma: library/flux_utils.py
# MODEL_VERSION_CHROMA, library/sai_model_spec.py ARCH_FLUX_1_CHROMA + "/lora" and IMPL_CHROMA, update_metadata's
# ss_model_type and ss_apply_t5_attn_mask). Like FLUX, no modelspec.prediction_type.
BASE_MODEL_VERSION = "chroma"
ARCHITECTURE = {"flow": "chroma/lora"}
IMPLEMENTATION = "https://huggingface.co/lodestones/Chroma"
METADATA = {"ss_model_type": "chroma", "ss_apply_t5_attn_mask": "True"}


def lora_target_names(denoiser, network) -> list[str]:
    """Full module paths of the transformer's LoRA targets: every Linear inside the double and single blocks, or
    those whose names end with one of network.targets (e.g. to_q, to_k, to_v, to_out.0 for attention only)."""
    return block_linear_targets(denoiser, _BLOCK, None, network.targets)


def load(model_cfg, dtype, device, progress=None) -> Components:
    from engine.models.families.chroma.loading import load_chroma_pipeline

    pipe = load_chroma_pipeline(model_cfg, dtype, progress or (lambda text, n, total: None))
    pipe.set_progress_bar_config(disable=True)
    # Everything stays in CPU RAM here: setup moves each part to the GPU only while it is needed (T5 while captions
    # are cached, the VAE while latents are), so a 12 GB card never holds T5 and the transformer at once.
    return Components(pipe=pipe, denoiser=pipe.transformer, vae=pipe.vae, text_encoders=(pipe.text_encoder,),
                      tokenizers=(pipe.tokenizer,), prediction_type="flow", alphas_cumprod=None,
                      vae_dtype=pipe.vae.dtype, extra={"max_sequence_length": T5_TOKENS})


def encode_text(comps: Components, captions: list[str]) -> dict:
    """{"prompt_embeds": [B, L, 4096] T5's hidden states, read with its attention mask, "prompt_mask": [B, L] the
    caption's tokens}, L = max_sequence_length for every caption (cached captions stack into batches)."""
    t5, tokenizer = comps.text_encoders[0], comps.tokenizers[0]
    tokens = tokenizer(captions, padding="max_length", max_length=comps.extra["max_sequence_length"], truncation=True,
                       return_tensors="pt")
    ids, mask = tokens.input_ids.to(t5.device), tokens.attention_mask.to(t5.device)
    return {"prompt_embeds": t5(ids, attention_mask=mask, output_hidden_states=False)[0], "prompt_mask": mask.bool()}


def attended_text(cond: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(states [B, n, D], attended [B, n] bool or None): the caption states cut to the longest attended length of
    the batch, n = the longest caption + 1, and the tokens each sample attends to (its caption and the one padding
    token after it, as ChromaPipeline's mask); None when every sample attends to all n (a batch of one)."""
    mask = cond["prompt_mask"].bool()
    kept = (mask.sum(dim=1) + 1).clamp(max=mask.shape[1])
    n = int(kept.max())
    attended = torch.arange(n, device=mask.device)[None] < kept[:, None]
    return cond["prompt_embeds"][:, :n], None if bool(attended.all()) else attended


def predict(comps: Components, x_t, t, cond: dict, size_cond) -> torch.Tensor:
    """The velocity (noise - x0) at x_t [B, C, h, w], noise level t [B]."""
    transformer = comps.denoiser
    b, _, h, w = x_t.shape
    states, attended = attended_text(cond)
    tokens, dtype = pack(x_t), states.dtype
    # the transformer's mask covers text then image tokens (ChromaPipeline._prepare_attention_mask); the blocks
    # make it [B, 1, n, n] as mask_i * mask_j, so a shorter caption's padding rows are masked whole: PyTorch's SDPA
    # gives them zeros (seen on the CPU, torch 2.13), and they are cut off with the text at the end
    mask = None if attended is None else torch.cat([attended, attended.new_ones(b, tokens.shape[1])], dim=1)
    with _mask_reaches_checkpointed_blocks(transformer, mask):
        out = transformer(hidden_states=tokens, timestep=t.to(x_t.dtype), encoder_hidden_states=states,
                          txt_ids=torch.zeros(states.shape[1], 3, device=x_t.device, dtype=dtype),
                          img_ids=image_ids(h, w, x_t.device, dtype), attention_mask=mask, return_dict=False)[0]
    return unpack(out, h, w)


@contextlib.contextmanager
def _mask_reaches_checkpointed_blocks(transformer, mask):
    """diffusers 0.42's ChromaTransformer2DModel calls its single blocks under gradient checkpointing as
    (block, hidden_states, temb, image_rotary_emb), without the attention mask, so a batch of unequal captions
    would attend to padding there. While `mask` is set, the checkpoint function hands it to them: as an argument
    of the checkpointed call, so the recomputation in backward gets it too."""
    from diffusers.models.transformers.transformer_chroma import ChromaSingleTransformerBlock

    checkpoint = getattr(transformer, "_gradient_checkpointing_func", None)
    if mask is None or checkpoint is None or not getattr(transformer, "gradient_checkpointing", False):
        yield
        return

    def with_mask(block, *args):
        if isinstance(block, ChromaSingleTransformerBlock) and len(args) == 3:
            args = (*args, mask)  # the block's 4th parameter is attention_mask
        return checkpoint(block, *args)

    transformer._gradient_checkpointing_func = with_mask
    try:
        yield
    finally:
        transformer._gradient_checkpointing_func = checkpoint


def sample_kwargs(cond: dict, negative, device) -> dict:
    """A prompt encoded ahead as ChromaPipeline takes it: each cut to its caption and one padding token, so its
    (boolean, all-true) mask masks nothing; the negative prompt's for the classifier-free pass. Without a negative
    cond the pipeline would encode "" itself (placement.py encodes it ahead for every cfg family)."""
    def one(c: dict) -> tuple:
        states, _ = attended_text({k: v[None] for k, v in c.items()})
        return states.to(device), torch.ones(states.shape[:2], dtype=torch.bool, device=device)

    out = dict(zip(("prompt_embeds", "prompt_attention_mask"), one(cond)))
    if negative is not None:
        out.update(zip(("negative_prompt_embeds", "negative_prompt_attention_mask"), one(negative)))
    return out


CHROMA = Family(
    name="chroma", caps=CAPABILITIES["chroma"], lora_targets=BLOCK_LINEARS, te_lora_targets=(),
    text_encoder_names=("text_encoder",), kohya_base_model={"flow": BASE_MODEL_VERSION},
    modelspec_architecture=ARCHITECTURE, load=load, encode_text=encode_text, encode_image=encode_image,
    predict=predict, pipeline=pipeline, metadata=METADATA, kohya_naming=KOHYA_NAMING,
    modelspec_implementation=IMPLEMENTATION, writes_prediction_type=False, lora_target_names=lora_target_names,
    cached_sample_prompts=True, sample_kwargs=sample_kwargs,
)

RECORDS = {"chroma": CHROMA}
