"""The tiny SDXL pipeline (engine/models/tiny.py's build_tiny): two text encoders, the second wider, and the UNet's
size conditioning (addition_embed_type text_time), as in the real model."""
from __future__ import annotations

from engine.models.tiny_parts import CLIP_HIDDEN, clip_config, tiny_clip_tokenizer, tiny_vae

# SDXL's second encoder is wider than the first, as in the real model (768 vs 1280): single-file loading tells the
# two apart by that width, so equal widths would load te1's weights into te2.
_SDXL_TE2_HIDDEN = 48


def sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(tokenizer, hidden=_SDXL_TE2_HIDDEN))
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_embed_dim + _SDXL_TE2_HIDDEN,  # 6 time ids + te2's pooled output
        cross_attention_dim=CLIP_HIDDEN + _SDXL_TE2_HIDDEN, norm_num_groups=1)      # te1 and te2 hidden states, concatenated
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
                                       timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=tiny_vae(force_upcast=False), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tiny_clip_tokenizer(),
                                     unet=unet, scheduler=scheduler)


BUILDERS = {"sdxl": sdxl}
