"""Every kohya LoRA module Easel writes for a real-size SD1.5, SD2 and SDXL is one that sd-scripts, ComfyUI/Forge and
A1111 place (tests/lora_name_rules.py holds their rules), with the default targets and the widest ones.

The models are built at full size on the meta device (no weights, a second or two), the LoRA adapters added by
the trainer's own add_lora, and the names taken from the exporter itself.
"""
from __future__ import annotations

import pytest
import torch

from engine.models.families import get_family
from engine.models.families.base import by_prediction
from engine.models.families.sd.ldm_convert import unet_module_to_ldm
from engine.models.lora import add_lora
from engine.models.lora_export import LoraExportInfo, _kohya_tensors
from lora_name_rules import (A1111_TE, COMFY_TE, SD_SCRIPTS, SD_SCRIPTS_WIDEST_COUNTS, SDXL_NEVER, a1111_unet_module,
                             matches_any)

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280],
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
SD2_UNET = dict(SD15_UNET, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)
SDXL_UNET = dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=[5, 10, 20], layers_per_block=2,
                 block_out_channels=[320, 640, 1280], transformer_layers_per_block=[1, 2, 10],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
CLIP_L = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
OPENCLIP_H = dict(hidden_size=1024, num_hidden_layers=23, num_attention_heads=16, intermediate_size=4096)
OPENCLIP_BIGG = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
                     projection_dim=1280)
MODELS = {"sd15": (SD15_UNET, [CLIP_L]), "sd2": (SD2_UNET, [OPENCLIP_H]), "sdxl": (SDXL_UNET, [CLIP_L, OPENCLIP_BIGG])}

# sd-scripts' widest: every Linear and Conv2d in transformers, resnets, down- and upsamplers (with conv_dim)
WIDEST_UNET = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "time_emb_proj", "conv")
WIDEST_TE = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def kohya_names(family_name: str, widest: bool) -> tuple[list[str], list[str], set[str]]:
    """(UNet names, text-encoder names, the UNet's LDM module names) as Easel writes them at real size."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = get_family(family_name)
    unet_cfg, te_cfgs = MODELS[family_name]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        tes = [(CLIPTextModelWithProjection if i == 1 else CLIPTextModel)(CLIPTextConfig(**cfg))
               for i, cfg in enumerate(te_cfgs)]
        ldm = {"diffusion_model_" + path.replace(".", "_") for name, m in unet.named_modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and (path := unet_module_to_ldm(name, unet.config))}
        add_lora(unet, 4, 4.0, 0.0, list(WIDEST_UNET if widest else family.lora_targets))
        for te in tes:
            add_lora(te, 4, 4.0, 0.0, list(WIDEST_TE if widest else family.te_lora_targets))
        info = LoraExportInfo(title="t", base_model_version=by_prediction(family.kohya_base_model, "epsilon"),
                              architecture=by_prediction(family.modelspec_architecture, "epsilon"),
                              text_encoder_names=family.text_encoder_names,
                              naming=family.kohya_naming)
        components = {"unet": unet, **dict(zip(family.text_encoder_names, tes))}
        tensors, _ = _kohya_tensors(components, info, "default")
    stems = sorted({k.rsplit(".", 2)[0] for k in tensors})
    return [s for s in stems if s.startswith("lora_unet")], [s for s in stems if s.startswith("lora_te")], ldm


@pytest.fixture(scope="module", params=[(f, w) for f in MODELS for w in (False, True)],
                ids=lambda p: f"{p[0]}-{'widest' if p[1] else 'default'}-targets")
def written(request):
    family, widest = request.param
    unet, te, ldm = kohya_names(family, widest)
    return family, widest, unet, te, ldm


def test_sd_scripts_places_every_module(written):
    family, widest, unet, te, _ = written
    assert unet and te
    misplaced = [n for n in unet + te if not matches_any(n, SD_SCRIPTS[family])]
    assert not misplaced, misplaced[:5]
    if widest:  # the very set sd-scripts trains, module for module
        assert (len(unet), len(te)) == SD_SCRIPTS_WIDEST_COUNTS[family]


def test_comfyui_and_forge_place_every_module(written):
    family, _, unet, te, _ = written
    assert all(matches_any(n, SD_SCRIPTS[family]) for n in unet)  # either style; Easel writes sd-scripts' one
    misplaced = [n for n in te if not matches_any(n, COMFY_TE[family])]
    assert not misplaced, misplaced[:5]


def test_a1111_places_every_module(written):
    family, _, unet, te, ldm = written
    unplaced = [n for n in unet if a1111_unet_module(n) not in ldm]
    assert not unplaced, unplaced[:5]
    misplaced = [n for n in te if not matches_any(n, A1111_TE[family])]
    assert not misplaced, misplaced[:5]
    if family != "sd15":  # open_clip layers: q, k, v and out of a layer come together
        layers = {n.rsplit("_self_attn_", 1)[0] for n in te if "_self_attn_" in n}
        for layer in layers:
            assert all(f"{layer}_self_attn_{p}_proj" in te for p in "qkvo" if p != "o") and \
                f"{layer}_self_attn_out_proj" in te, layer


@pytest.mark.parametrize("widest", [False, True], ids=["default-targets", "widest-targets"])
def test_sdxl_is_written_in_the_original_names_only(widest):
    unet, te, _ = kohya_names("sdxl", widest)  # SD1.x/SD2 keep diffusers paths, as sd-scripts writes them
    assert not [n for n in unet + te if matches_any(n, SDXL_NEVER)]
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in unet
    if widest:  # the upsampler conv A1111 dropped from diffusers-style SDXL files
        assert {"lora_unet_output_blocks_2_2_conv", "lora_unet_input_blocks_3_0_op"} <= set(unet)
