"""The tiny SD 1.x and SD 2.x pipelines (engine/models/tiny.py's build_tiny): two UNet levels with cross-attention,
SD2 with linear transformer projections and v-prediction, as the real ones differ."""
from __future__ import annotations

from engine.models.tiny_parts import CLIP_HIDDEN, clip_config, tiny_clip_tokenizer, tiny_vae


def ddpm(prediction_type: str):
    from diffusers import DDPMScheduler

    # steps_offset=1 and clip_sample=False as in the real SD configs; without them diffusers warns on every load.
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         prediction_type=prediction_type, steps_offset=1, clip_sample=False)


def _sd_pipeline(prediction_type: str, linear_projection: bool):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(clip_config(tokenizer))
    # SD2's transformer blocks use Linear proj_in/proj_out where SD1 uses 1x1 convs; keep that difference.
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CLIP_HIDDEN,
                                attention_head_dim=8, norm_num_groups=32, use_linear_projection=linear_projection)
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=ddpm(prediction_type), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sd15():
    return _sd_pipeline("epsilon", linear_projection=False)


def sd2():
    """SD2-v: the SD1 layout with v-prediction (CLIPTextModel stands in for OpenCLIP; same module names in diffusers)."""
    return _sd_pipeline("v_prediction", linear_projection=True)


BUILDERS = {"sd15": sd15, "sd2": sd2}
