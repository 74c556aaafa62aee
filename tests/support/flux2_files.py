"""The real-size FLUX.2 klein (4B and 9B) as header-only .safetensors files: every tensor's name, dtype, shape and
data offsets, the data itself a hole (a sparse file: a few KB on disk for up to 34 GB of weights). "Will it fit"
reads only headers, so these stand in for the real models in its tests and in a dry run without the downloads:

    from support.flux2_files import write_flux2_headers
    files = write_flux2_headers(Path("klein-headers"), "9b")
    # python -m engine train presets/flux2-klein9b-lora-24gb.yaml --dry-run --set model.path=<files["folder"]>
    # ... or --set model.path=<files["transformer"]> --set model.text_encoder_path=<files["text_encoder"]>
    #        --set model.vae_path=<files["vae"]> --set model.single_file_config=<files["folder"]>

(on Windows the holes take real disk space, so the tests that write them run elsewhere). The shapes come from the
real configs on the meta device: diffusers' Flux2Transformer2DModel and AutoencoderKLFlux2, transformers'
Qwen3ForCausalLM; BFL's names are diffusers' backwards, and the tests check them with diffusers' own converter.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from support.zimage_files import write_header_only

# transformer/config.json of black-forest-labs/FLUX.2-klein-base-4B and -9B (the distilled klein's are alike)
KLEIN_CONFIGS = {
    "4b": {"num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24, "attention_head_dim": 128,
           "joint_attention_dim": 7680, "in_channels": 128, "mlp_ratio": 3.0, "guidance_embeds": False},
    "9b": {"num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32, "attention_head_dim": 128,
           "joint_attention_dim": 12288, "in_channels": 128, "mlp_ratio": 3.0, "guidance_embeds": False},
}
# text_encoder/config.json: Qwen3-4B (its lm_head tied to the embedding) and Qwen3-8B (its own lm_head)
QWEN3_CONFIGS = {
    "4b": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True},
    "9b": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False},
}
COMFY_NAMES = {"4b": ("flux-2-klein-base-4b", "qwen_3_4b"), "9b": ("flux-2-klein-base-9b", "qwen_3_8b")}


def _shapes(state: dict, dtype: str = "BF16") -> dict:
    return {k: (tuple(v.shape), dtype) for k, v in state.items()}


def real_flux2_tensors(variant: str) -> dict:
    """{part: {name: (shape, dtype)}} of the real klein `variant` ("4b" | "9b") in diffusers' layout, as its
    repository stores it (Qwen3's tied lm_head is not saved), from the configs on the meta device."""
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(**KLEIN_CONFIGS[variant])
        encoder = Qwen3ForCausalLM(Qwen3Config(**QWEN3_CONFIGS[variant]))
        vae = AutoencoderKLFlux2()
    text = _shapes(encoder.state_dict())
    if QWEN3_CONFIGS[variant]["tie_word_embeddings"]:
        text.pop("lm_head.weight")
    return {"transformer": _shapes(transformer.state_dict()), "text_encoder": text, "vae": _shapes(vae.state_dict())}


# diffusers' names -> BFL's, the reverse of single_file_utils.convert_flux2_transformer_checkpoint_to_diffusers
_OUTSIDE = {"x_embedder": "img_in", "context_embedder": "txt_in",
            "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
            "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
            "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
            "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
            "single_stream_modulation.linear": "single_stream_modulation.lin",
            "norm_out.linear": "final_layer.adaLN_modulation.1", "proj_out": "final_layer.linear"}
_DOUBLE = {"attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
           "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
           "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
           "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2", "ff_context.linear_in": "txt_mlp.0",
           "ff_context.linear_out": "txt_mlp.2"}
_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm",
           "attn.norm_k": "norm.key_norm"}
_QKV = {"attn.to_q": "img_attn.qkv", "attn.add_q_proj": "txt_attn.qkv"}   # k and v join their q's rows
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.(weight|bias)$")


def bfl_names(tensors: dict) -> dict:
    """The transformer's tensors in BFL's layout (flux-2-klein-base-*.safetensors): q, k, v fused into one qkv of
    3x the rows, the norms' weights named `scale`, the blocks `double_blocks` / `single_blocks`."""
    out = {}
    for name, (shape, dtype) in tensors.items():
        m = _BLOCK.match(name)
        if not m:
            module, param = name.rsplit(".", 1)
            out[f"{_OUTSIDE[module]}.{param}"] = (shape, dtype)
            continue
        kind, index, module, param = m.groups()
        if module in ("attn.to_k", "attn.to_v", "attn.add_k_proj", "attn.add_v_proj"):
            continue
        if module in _QKV:
            out[f"double_blocks.{index}.{_QKV[module]}.{param}"] = ((3 * shape[0], *shape[1:]), dtype)
            continue
        table, bfl_kind = (_DOUBLE, "double_blocks") if kind == "transformer_blocks" else (_SINGLE, "single_blocks")
        param = "scale" if "norm" in module else param
        out[f"{bfl_kind}.{index}.{table[module]}.{param}"] = (shape, dtype)
    return out


def _ae_layout(tensors: dict) -> dict:
    """The AE in its original layout (encoder.down.0.block.0 ..., ComfyUI's flux2-vae.safetensors): the LDM VAE
    names of its encoder and decoder, the quant convs and batch-norm statistics as they are."""
    import torch

    from engine.models.families.sd.ldm_convert import vae_state_to_ldm

    meta = {k: torch.empty(shape, device="meta") for k, (shape, _) in tensors.items() if not k.startswith("bn.")}
    out = {k: (tuple(v.shape), "BF16") for k, v in vae_state_to_ldm(meta, 4).items()}
    out.update({k: v for k, v in tensors.items() if k.startswith("bn.")})
    return out


def write_flux2_headers(folder: Path, variant: str, fp8_blocks: bool = False) -> dict[str, Path]:
    """The real klein `variant` as header-only files in `folder`: a diffusers folder (diffusers/: model_index.json,
    transformer/, text_encoder/, vae/, each with its config) and the files a ComfyUI user has (comfyui/:
    flux-2-klein-base-<4b|9b>.safetensors in BFL's layout, with fp8_blocks its block linears in F8_E4M3; qwen_3_4b /
    qwen_3_8b.safetensors with Qwen3ForCausalLM's names; flux2-vae.safetensors in the original layout).
    Returns {"folder", "transformer", "text_encoder", "vae"} -> path."""
    folder = Path(folder)
    parts = real_flux2_tensors(variant)
    diffusers = folder / "diffusers"
    files = {"transformer": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors",
             "vae": "diffusion_pytorch_model.safetensors"}
    for part, name in files.items():
        write_header_only(diffusers / part / name, parts[part])
    configs = {"transformer": {"_class_name": "Flux2Transformer2DModel", **KLEIN_CONFIGS[variant]},
               "text_encoder": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                                **QWEN3_CONFIGS[variant]},
               "vae": {"_class_name": "AutoencoderKLFlux2"}}
    for part, config in configs.items():
        (diffusers / part / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (diffusers / "model_index.json").write_text(json.dumps(
        {"_class_name": "Flux2KleinPipeline", "is_distilled": False,
         "_name_or_path": f"black-forest-labs/FLUX.2-klein-base-{variant.upper()}",
         "transformer": ["diffusers", "Flux2Transformer2DModel"], "text_encoder": ["transformers", "Qwen3ForCausalLM"],
         "vae": ["diffusers", "AutoencoderKLFlux2"], "tokenizer": ["transformers", "Qwen2TokenizerFast"],
         "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}), encoding="utf-8")
    bfl = bfl_names(parts["transformer"])
    if fp8_blocks:
        bfl = {k: (s, "F8_E4M3" if len(s) == 2 and k.startswith(("double_blocks.", "single_blocks.")) else d)
               for k, (s, d) in bfl.items()}
    comfyui = folder / "comfyui"
    model, encoder = COMFY_NAMES[variant]
    return {"folder": diffusers,
            "transformer": write_header_only(comfyui / f"{model}{'-fp8' if fp8_blocks else ''}.safetensors", bfl),
            "text_encoder": write_header_only(comfyui / f"{encoder}.safetensors", parts["text_encoder"]),
            "vae": write_header_only(comfyui / "flux2-vae.safetensors", _ae_layout(parts["vae"]))}
