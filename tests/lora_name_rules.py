"""How sd-scripts, ComfyUI/Forge and A1111 find the module of a kohya LoRA key, written down as data.

Read from the loaders' sources (kohya-ss/sd-scripts networks/lora.py LoRANetwork.create_modules,
library/sdxl_original_unet.py; ComfyUI comfy/lora.py model_lora_keys_unet / model_lora_keys_clip and
comfy/utils.py unet_to_diffusers; A1111 extensions-builtin/Lora/networks.py convert_diffusers_name_to_compvis and
load_network), restated here; none of their code is copied. Names are module stems (no `.lora_down.weight`).
"""
from __future__ import annotations

import re

TB = r"(attn[12]_to_(q|k|v|out_0)|ff_net_0_proj|ff_net_2)"          # inside a transformer block
TEL = r"(self_attn_(q|k|v|out)_proj|mlp_fc[12])"                      # inside a CLIP encoder layer

# sd-scripts: the names it writes and reads back (LoRANetwork built from weights). SD1.x/SD2 UNets in diffusers
# paths (its original_unet copies the diffusers layout), SDXL in the original LDM paths (its SdxlUNet2DConditionModel
# is the SGM layout); text encoders always with `text_model`.
_SD_UNET = [
    rf"^lora_unet_down_blocks_[0-2]_attentions_[01]_(proj_in|proj_out|transformer_blocks_0_{TB})$",
    rf"^lora_unet_mid_block_attentions_0_(proj_in|proj_out|transformer_blocks_0_{TB})$",
    rf"^lora_unet_up_blocks_[1-3]_attentions_[0-2]_(proj_in|proj_out|transformer_blocks_0_{TB})$",
    r"^lora_unet_down_blocks_[0-3]_resnets_[01]_(conv1|conv2|time_emb_proj)$",            # with conv layers
    r"^lora_unet_down_blocks_[12]_resnets_0_conv_shortcut$",
    r"^lora_unet_mid_block_resnets_[01]_(conv1|conv2|time_emb_proj)$",
    r"^lora_unet_up_blocks_[0-3]_resnets_[0-2]_(conv1|conv2|time_emb_proj|conv_shortcut)$",
    r"^lora_unet_down_blocks_[0-2]_downsamplers_0_conv$", r"^lora_unet_up_blocks_[0-2]_upsamplers_0_conv$",
]
SD_SCRIPTS = {
    "sd15": [*_SD_UNET, rf"^lora_te_text_model_encoder_layers_([0-9]|1[01])_{TEL}$"],
    "sd2": [*_SD_UNET, rf"^lora_te_text_model_encoder_layers_([0-9]|1[0-9]|2[0-2])_{TEL}$"],
    "sdxl": [
        rf"^lora_unet_(input_blocks_[45]|output_blocks_[345])_1_(proj_in|proj_out|transformer_blocks_[01]_{TB})$",
        rf"^lora_unet_(input_blocks_[78]|middle_block|output_blocks_[012])_1_"
        rf"(proj_in|proj_out|transformer_blocks_[0-9]_{TB})$",
        r"^lora_unet_(input_blocks_[124578]|output_blocks_[0-8])_0_(in_layers_2|out_layers_3|emb_layers_1)$",
        r"^lora_unet_(input_blocks_[47]|output_blocks_[0-8])_0_skip_connection$",
        r"^lora_unet_middle_block_[02]_(in_layers_2|out_layers_3|emb_layers_1)$",
        r"^lora_unet_input_blocks_[36]_0_op$", r"^lora_unet_output_blocks_[25]_2_conv$",
        rf"^lora_te1_text_model_encoder_layers_([0-9]|1[01])_{TEL}$",
        rf"^lora_te2_text_model_encoder_layers_([0-9]|[12][0-9]|3[01])_{TEL}$",
    ],
}
# What sd-scripts trains at real size with the widest targets (transformers + resnets + samplers, conv_dim set):
# UNet modules, text-encoder modules.
SD_SCRIPTS_WIDEST_COUNTS = {"sd15": (278, 72), "sd2": (278, 138), "sdxl": (788, 72 + 192)}
# sd-scripts' own SDXL tools (sdxl_merge_lora.py, --network_weights) match LDM names only and skip the rest.
SDXL_NEVER = [r"^lora_unet_(down_blocks|mid_block|up_blocks|conv_|time_embedding|add_embedding)", r"^lora_te_",
              r"^lora_te[12]?_encoder_"]   # the last: a CLIP path without text_model (transformers 5 flattens it)

# ComfyUI (and Forge, which bundles the same code): the UNet accepts `lora_unet_` + any LDM weight path and
# `lora_unet_` + the diffusers path of every module its unet_to_diffusers map knows, so every module of these UNets
# in either style; text encoders only the six layer modules, with text_model, lora_te_/lora_te1_ for CLIP-L/H
# (< 24 layers there) and lora_te2_ for SDXL's bigG (< 32 layers).
COMFY_TE = {
    "sd15": [rf"^lora_te1?_text_model_encoder_layers_(\d|1\d|2[0-3])_{TEL}$"],
    "sd2": [rf"^lora_te1?_text_model_encoder_layers_(\d|1\d|2[0-3])_{TEL}$"],
    "sdxl": [rf"^lora_te1?_text_model_encoder_layers_(\d|1[01])_{TEL}$",
             rf"^lora_te2_text_model_encoder_layers_(\d|[12]\d|3[01])_{TEL}$"],
}

# A1111: a key stem is first rewritten by these rules (first match wins; diffusers -> compvis names), then looked
# up among the LDM model's modules (`diffusion_model_<ldm path>`); an unconverted `lora_unet_` name is looked up
# with `lora_unet` replaced by `diffusion_model`, which is how LDM-style (SDXL) names match.
_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
           "conv_shortcut": "skip_connection", "norm1": "in_layers_0", "norm2": "out_layers_0"}


def _part(kind: str, rest: str) -> str:
    if kind == "attentions":
        return f"1_{rest}"
    for diffusers, compvis in _RESNET.items():
        if rest.startswith(diffusers):
            return "0_" + compvis + rest[len(diffusers):]
    return f"0_{rest}"


A1111_UNET_RULES = [
    (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[1]}"),
    (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[1]}"),
    (r"lora_unet_time_embedding_linear_(\d+)(.*)", lambda m: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"),
    (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{_part(m[2], m[4])}"),
    (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_"
               f"{_part(m[1], m[3]).split('_', 1)[1]}"),
    (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{_part(m[2], m[4])}"),
    (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", lambda m: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"),
    (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
     lambda m: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"),
]
A1111_TE = {   # SD2's and SDXL-bigG's open_clip layers also need all of q, k, v and out per layer
    "sd15": [rf"^lora_te1?_text_model_encoder_layers_([0-9]|1[01])_{TEL}$"],
    "sd2": [rf"^lora_te_text_model_encoder_layers_\d+_{TEL}$"],
    "sdxl": [rf"^lora_te1_text_model_encoder_layers_([0-9]|1[01])_{TEL}$",
             rf"^lora_te2_text_model_encoder_layers_(\d|[12]\d|3[01])_{TEL}$"],
}


def a1111_unet_module(name: str) -> str:
    """The LDM module name A1111 looks a `lora_unet_` key stem up under."""
    for pattern, to_compvis in A1111_UNET_RULES:
        if m := re.match(pattern, name):
            return to_compvis(m)
    return name.replace("lora_unet", "diffusion_model", 1)


def matches_any(name: str, patterns: list[str]) -> bool:
    return any(re.match(p, name) for p in patterns)


# FLUX.1, whose kohya files use Black Forest Labs' checkpoint names. Read from: ComfyUI comfy/lora.py
# model_lora_keys_unet (`lora_unet_` + every weight path of its BFL-layout Flux model, dots as underscores) and
# comfy/ldm/flux/layers.py (DoubleStreamBlock: img_/txt_ mod.lin, attn.qkv, attn.proj, mlp.0, mlp.2; SingleStreamBlock:
# linear1, linear2, modulation.lin), its flux_to_diffusers map (comfy/utils.py; to_q/k/v -> img_attn.qkv slices,
# add_q/k/v_proj -> txt_attn.qkv, single attn.to_q/k/v + proj_mlp -> linear1) and model_lora_keys_clip (CLIP-L as
# lora_te_ or lora_te1_ with text_model); kohya-ss/sd-scripts networks/lora_flux.py (LoRANetwork: lora_unet from the
# BFL model's module names, CLIP-L lora_te1, T5 lora_te3; in_dims adds img_in, time_in, vector_in, guidance_in, txt_in);
# diffusers loaders/lora_conversion_utils.py _convert_kohya_flux_lora_to_diffusers (the same block names, 19 double and
# 38 single blocks; qkv split in three equal parts, linear1 at widths 3072, 3072, 3072, 12288).
_FLUX_EMBEDDERS = r"(img_in|txt_in|(time_in|vector_in|guidance_in)_(in_layer|out_layer))"
COMFY_FLUX = [
    r"^lora_unet_double_blocks_(\d|1[0-8])_(img|txt)_(mod_lin|attn_qkv|attn_proj|mlp_0|mlp_2)$",
    r"^lora_unet_single_blocks_(\d|[12]\d|3[0-7])_(linear1|linear2|modulation_lin)$",
    rf"^lora_unet_{_FLUX_EMBEDDERS}$",
    r"^lora_unet_final_layer_(linear|adaLN_modulation_1)$",
    rf"^lora_te1?_text_model_encoder_layers_(\d|1[01])_{TEL}$",
]
SD_SCRIPTS_FLUX = [*COMFY_FLUX[:3], rf"^lora_te1_text_model_encoder_layers_(\d|1[01])_{TEL}$"]
# sd-scripts' default FLUX.1 network (every Linear of every block, modulation included; CLIP-L's attention and MLP):
# transformer modules, CLIP-L modules.
SD_SCRIPTS_FLUX_DEFAULT_COUNTS = (19 * 10 + 38 * 3, 12 * 6)
# How many diffusers layers one module of a kohya FLUX file fills (diffusers' converter splits these).
DIFFUSERS_FLUX_SPLITS = {r"_attn_qkv$": 3, r"^lora_unet_single_blocks_\d+_linear1$": 4}


def diffusers_flux_layers(name: str) -> int:
    return next((n for pattern, n in DIFFUSERS_FLUX_SPLITS.items() if re.search(pattern, name)), 1)
