"""The tiny FLUX.1 pipeline (engine/models/tiny.py's build_tiny): one double and one single block, CLIP + T5,
a VAE with FLUX's shift and scale (4 latent channels, packed 2x2 into 16 per token), dev's guidance embedding."""
from __future__ import annotations

from engine.models.tiny_parts import CLIP_HIDDEN, clip_config, tiny_clip_tokenizer, tiny_t5_tokenizer, tiny_vae


def flux():
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
        joint_attention_dim=t5_width, pooled_projection_dim=CLIP_HIDDEN,
        guidance_embeds=True, axes_dims_rope=[4, 4, 8])  # dev-style (guidance distilled); sum(axes) = head dim
    vae = tiny_vae(latent_channels=latent_channels, use_quant_conv=False, use_post_quant_conv=False,
                   shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=CLIPTextModel(clip_config(tokenizer)),
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)


BUILDERS = {"flux": flux}
