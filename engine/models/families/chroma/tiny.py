"""The tiny Chroma pipeline (engine/models/tiny.py's build_tiny): one double and one single block, a T5 encoder
(FLUX's tiny one), a one-layer approximator (distilled_guidance_layer) and a VAE with FLUX's shift and scale
(4 latent channels, packed 2x2 into 16 per token)."""
from __future__ import annotations

from engine.models.tiny_parts import tiny_t5_tokenizer, tiny_vae


def chroma():
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    t5_width = 32
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=t5_width, d_kv=8, d_ff=37, num_layers=2,
                                           num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                           pad_token_id=0, eos_token_id=1))
    latent_channels = 4
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels,  # latents are packed 2x2 into tokens
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=t5_width,
        axes_dims_rope=(4, 4, 8),  # sum(axes) = head dim
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1)
    vae = tiny_vae(latent_channels=latent_channels, use_quant_conv=False, use_post_quant_conv=False,
                   shift_factor=0.0609, scaling_factor=1.5035)
    # ChromaPipeline always computes the size-dependent shift (mu); FLUX.1's dynamic-shift settings
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return ChromaPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                          transformer=transformer)


BUILDERS = {"chroma": chroma}
