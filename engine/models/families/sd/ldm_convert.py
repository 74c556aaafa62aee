"""Diffusers folder -> one original-layout (LDM / "CompVis") `.safetensors`, the file type users download.

`write_single_file` exists so tests can load a checkpoint through `from_single_file(path, config=<local folder>)`,
the path a user's downloaded SD1.x/SD2/SDXL checkpoint takes. It is the inverse of diffusers'
`loaders/single_file_utils.py` converters and is generic over block counts (diffusers' own
`convert_diffusers_to_original_stable_diffusion.py` script hard-codes SD1.5's 4x2 layout and is not in the wheel).

Layouts written (prefixes as in the released checkpoints):
  SD1.x  UNet `model.diffusion_model.`, VAE `first_stage_model.`, CLIP `cond_stage_model.transformer.text_model.`
  SD2.x  as SD1.x, but the text encoder in OpenCLIP layout `cond_stage_model.model.` (fused qkv `in_proj_weight`)
  SDXL   CLIP-L `conditioner.embedders.0.transformer.text_model.`, OpenCLIP-bigG `conditioner.embedders.1.model.`
A diffusers folder is "SD2" when its UNet uses linear transformer projections, as every SD2 UNet does.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

_RESNET_TO_LDM = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                  ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_UNET_TOP_LEVEL = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                   "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
                   "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_LAYER_TO_LDM = [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                          ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]


def write_single_file(diffusers_dir: Path, out_file: Path) -> Path:
    """Write the SD1.x/SD2/SDXL pipeline folder `diffusers_dir` as one LDM-layout fp32 `.safetensors`."""
    from safetensors.torch import save_file

    diffusers_dir = Path(diffusers_dir)
    pipeline_class = json.loads((diffusers_dir / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    unet_config = json.loads((diffusers_dir / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((diffusers_dir / "vae" / "config.json").read_text(encoding="utf-8"))

    checkpoint = {}
    unet = load_component(diffusers_dir / "unet")
    checkpoint.update({"model.diffusion_model." + unet_key_to_ldm(k, unet_config): v for k, v in unet.items()})
    vae = load_component(diffusers_dir / "vae")
    checkpoint.update({"first_stage_model." + vae_key_to_ldm(k, len(vae_config["up_block_types"])): _vae_value(k, v)
                       for k, v in vae.items()})
    text_encoder = load_component(diffusers_dir / "text_encoder")
    if pipeline_class == "StableDiffusionXLPipeline":
        checkpoint.update(clip_to_ldm(text_encoder, "conditioner.embedders.0.transformer.text_model."))
        checkpoint.update(_openclip_to_ldm(load_component(diffusers_dir / "text_encoder_2"),
                                           "conditioner.embedders.1.model."))
    elif pipeline_class == "StableDiffusionPipeline" and unet_config.get("use_linear_projection"):
        checkpoint.update(_openclip_to_ldm(text_encoder, "cond_stage_model.model."))
    elif pipeline_class == "StableDiffusionPipeline":
        checkpoint.update(clip_to_ldm(text_encoder, "cond_stage_model.transformer.text_model."))
    else:
        raise ValueError(f"write_single_file: {pipeline_class} is not supported (SD1.x, SD2 and SDXL are)")

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(out_file))
    return out_file


def load_component(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a diffusers component folder (all its shards); flux/files.py writes FLUX's files from it."""
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):  # one file for tiny models; several for sharded real ones
        tensors.update(load_file(str(shard)))
    if not tensors:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    return tensors


# ---------------------------------------------------------------------------------------------- UNet

def unet_key_to_ldm(key: str, config: dict) -> str:
    """`down_blocks.1.resnets.0.conv1.weight` -> `input_blocks.4.0.in_layers.2.weight` for the UNet in `config`."""
    per_level = config["layers_per_block"] + 1  # LDM counts the down/upsampler as one more block per level
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    for diffusers_name, ldm_name in _UNET_TOP_LEVEL.items():
        if key.startswith(diffusers_name + "."):
            return ldm_name + key[len(diffusers_name):]

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + level * per_level + j}." + _block_part(kind, rest)
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        index = 2 * j if kind == "resnets" else 1  # resnet, attention, resnet
        return f"middle_block.{index}." + _strip_part(_block_part(kind, rest))
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{level * per_level + j}." + _block_part(kind, rest)
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(m[1])
        slot = 2 if up_has_attention[level] else 1  # after the resnet (and the attention, if the level has one)
        return f"output_blocks.{level * per_level + per_level - 1}.{slot}.conv.{m[2]}"
    raise KeyError(f"unet key {key!r} has no LDM name (unsupported UNet layout)")


def unet_module_to_ldm(path: str, config: dict) -> str | None:
    """A UNet module path as the original layout names it (`down_blocks.1.attentions.0.proj_in` ->
    `input_blocks.4.1.proj_in`): the names sd-scripts gives SDXL LoRA modules. None when it has no LDM name."""
    try:
        return unet_key_to_ldm(path + ".weight", config).removesuffix(".weight")
    except KeyError:
        return None


def _block_part(kind: str, rest: str) -> str:
    """Within one LDM block: slot 0 is the resnet (renamed parts), slot 1 the transformer (names unchanged)."""
    if kind == "attentions":
        return "1." + rest
    for diffusers_name, ldm_name in _RESNET_TO_LDM:
        if rest.startswith(diffusers_name + "."):
            return "0." + ldm_name + rest[len(diffusers_name):]
    raise KeyError(f"resnet parameter {rest!r} has no LDM name")


def _strip_part(part: str) -> str:
    """The middle block has no slots: `middle_block.0.in_layers...`, `middle_block.1.proj_in...`."""
    return part.split(".", 1)[1]


# ---------------------------------------------------------------------------------------------- VAE

def vae_key_to_ldm(key: str, num_levels: int) -> str:
    """`decoder.up_blocks.0.resnets.1.conv1.weight` -> `decoder.up.3.block.1.conv1.weight` (LDM counts up-levels
    from the bottom, diffusers from the top)."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION_TO_LDM[m[2]]}.{m[3]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def _vae_value(key: str, value: torch.Tensor) -> torch.Tensor:
    """LDM's VAE attention uses 1x1 convolutions where diffusers uses Linear layers."""
    if ".mid_block.attentions." in key and "group_norm" not in key and value.ndim == 2:
        return value[:, :, None, None]
    return value


def vae_state_to_ldm(state: dict, num_levels: int) -> dict:
    """A diffusers AutoencoderKL state dict in the original layout (the standalone VAE files A1111, Forge and
    ComfyUI load: `encoder.down.0.block.0.conv1.weight`, ..., no prefix)."""
    return {vae_key_to_ldm(k, num_levels): _vae_value(k, v) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------- text encoders

def clip_to_ldm(state: dict, prefix: str) -> dict:
    """HF CLIP keeps its names; transformers >= 5.6 saves CLIPTextModel without `text_model.`, which LDM has."""
    return {prefix + k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}


def _openclip_to_ldm(state: dict, prefix: str) -> dict:
    """HF CLIP names -> OpenCLIP names, fusing q/k/v into `in_proj_*` and transposing the text projection."""
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out = {}
    for key, value in state.items():
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.split(".")[-1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T  # OpenCLIP multiplies x @ P; a Linear computes x @ W.T
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key):
            layer, kind = m[1], m[2]
            parts = [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        elif re.match(r"encoder\.layers\.\d+\.self_attn\.[kv]_proj\.", key):
            continue  # fused above with q
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.*)", key):
            rest = m[2]
            for hf_name, openclip_name in _OPENCLIP_LAYER_TO_LDM:
                rest = rest.replace(hf_name, openclip_name)
            out[f"transformer.resblocks.{m[1]}.{rest}"] = value
        else:
            raise KeyError(f"text encoder key {key!r} has no OpenCLIP name")
    return {prefix + k: v for k, v in out.items()}
