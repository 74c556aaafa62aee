"""Tiny random-init diffusers model folders, built offline, for the demo and every test.

`build_tiny(family, out_dir, seed)` writes a folder with `save_pretrained`, so the loaders the trainer uses on a
user's real model (`from_pretrained`, tokenizer loading, scheduler config) run unchanged on a few-MB model.
The shapes are the smallest that keep each family's real structure (two UNet levels with cross-attention,
a VAE with scale factor 8, two text encoders for SDXL, CLIP + T5 for FLUX); see notes/platform-facts.md §2, §4.

Everything is deterministic for a seed, and the caller's global RNG is left untouched (fork_rng).
`write_single_file` lives in engine/models/families/sd/ldm_convert.py and is re-exported here for the tests.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

from engine.models.families.sd.ldm_convert import write_flux_files, write_single_file  # noqa: F401  (re-export for the tests)

FAMILIES = ("sd15", "sd2", "sdxl", "flux")

# A few BPE merges so that common words are single tokens; the rest falls back to characters.
_CLIP_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "n</w>"), ("i", "n"), ("in", "g</w>"),
                ("c", "a"), ("ca", "t</w>")]
_CLIP_HIDDEN = 32  # CLIP text width; also FLUX's pooled_projection_dim
# SDXL's second encoder is wider than the first, as in the real model (768 vs 1280): single-file loading tells the
# two apart by that width, so equal widths would load te1's weights into te2.
_SDXL_TE2_HIDDEN = 48


def build_tiny(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny `family` pipeline (sd15, sd2, sdxl, flux) and save it to `out_dir`; returns out_dir."""
    from engine.registry import choose

    builder = choose(_BUILDERS, family, "model.family")
    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = builder()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# ---------------------------------------------------------------------------------------------- tokenizers

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable-unicode alphabet (256 characters), so any UTF-8 text tokenizes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def tiny_clip_tokenizer():
    """A CLIPTokenizer over the byte alphabet plus a few merges (about 530 tokens), built in memory."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in _CLIP_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    # transformers 5: merges must be tuples, not "a b" strings.
    return CLIPTokenizer(vocab=vocab, merges=list(_CLIP_MERGES), model_max_length=77, bos_token="<|startoftext|>",
                         eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_t5_tokenizer():
    """A Unigram T5Tokenizer over lowercase letters, digits and two words, built in memory."""
    from transformers import T5Tokenizer

    letters = string.ascii_lowercase
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + c, -3.0) for c in letters]
    pieces += [(c, -4.0) for c in letters + "0123456789.,!?'-"] + [("▁the", -1.0), ("▁cat", -1.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_config(tokenizer, hidden: int = _CLIP_HIDDEN):
    from transformers import CLIPTextConfig

    vocab = tokenizer.get_vocab()
    return CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=77, projection_dim=hidden,
                          bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                          pad_token_id=vocab["<|endoftext|>"])


# ---------------------------------------------------------------------------------------------- shared parts

def _vae(**overrides):
    """4 levels -> vae_scale_factor 8, as in every real SD/SDXL/FLUX VAE, so 64 px images give 8x8 latents."""
    from diffusers import AutoencoderKL

    config = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
                  norm_num_groups=8, sample_size=64)
    return AutoencoderKL(**{**config, **overrides})


def _ddpm(prediction_type: str):
    from diffusers import DDPMScheduler

    # steps_offset=1 and clip_sample=False as in the real SD configs; without them diffusers warns on every load.
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         prediction_type=prediction_type, steps_offset=1, clip_sample=False)


# ---------------------------------------------------------------------------------------------- families

def _sd_pipeline(prediction_type: str, linear_projection: bool):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    # SD2's transformer blocks use Linear proj_in/proj_out where SD1 uses 1x1 convs; keep that difference.
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=_CLIP_HIDDEN,
                                attention_head_dim=8, norm_num_groups=32, use_linear_projection=linear_projection)
    return StableDiffusionPipeline(vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=_ddpm(prediction_type), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _sd15():
    return _sd_pipeline("epsilon", linear_projection=False)


def _sd2():
    """SD2-v: the SD1 layout with v-prediction (CLIPTextModel stands in for OpenCLIP; same module names in diffusers)."""
    return _sd_pipeline("v_prediction", linear_projection=True)


def _sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden=_SDXL_TE2_HIDDEN))
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_embed_dim + _SDXL_TE2_HIDDEN,  # 6 time ids + te2's pooled output
        cross_attention_dim=_CLIP_HIDDEN + _SDXL_TE2_HIDDEN, norm_num_groups=1)      # te1 and te2 hidden states, concatenated
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
                                       timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_vae(force_upcast=False), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tiny_clip_tokenizer(),
                                     unet=unet, scheduler=scheduler)


def _flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    t5_width = 32
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=t5_width, d_kv=8, d_ff=37,
                                             num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    latent_channels = 4
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels,  # latents are packed 2x2 into tokens
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=t5_width, pooled_projection_dim=_CLIP_HIDDEN,
        guidance_embeds=True, axes_dims_rope=[4, 4, 8])  # dev-style (guidance distilled); sum(axes) = head dim
    vae = _vae(latent_channels=latent_channels, use_quant_conv=False, use_post_quant_conv=False,
               shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=CLIPTextModel(_clip_config(tokenizer)),
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)


_BUILDERS = {"sd15": _sd15, "sd2": _sd2, "sdxl": _sdxl, "flux": _flux}
