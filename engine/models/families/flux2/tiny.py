"""The tiny FLUX.2 klein pipeline (engine/models/tiny.py's build_tiny): one double and one single block, a Qwen3
causal LM of 28 layers (the pipeline reads hidden states 9, 18 and 27, so it needs that depth) at width 16 over
zimage's tiny chat-template tokenizer, and a 4-channel FLUX.2 AE (the real one has 32: 128 per 2x2 patch)."""
from __future__ import annotations

QWEN_WIDTH = 16
LAYERS_READ = (9, 18, 27)   # Flux2KleinPipeline's text_encoder_out_layers


def flux2():
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, \
        Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from engine.models.families.zimage.tiny import tiny_qwen_tokenizer

    tokenizer = tiny_qwen_tokenizer()
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=QWEN_WIDTH, intermediate_size=24, num_hidden_layers=max(LAYERS_READ) + 1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True))
    latent_channels = 4
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16, 32, 32), latent_channels=latent_channels, norm_num_groups=8,
                             layers_per_block=1, sample_size=64)
    transformer = Flux2Transformer2DModel(
        in_channels=4 * latent_channels, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=len(LAYERS_READ) * QWEN_WIDTH, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)   # klein: no guidance embedding; sum(axes) = head dim
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=False)


BUILDERS = {"flux2": flux2}
