"""The real-size Z-Image as header-only .safetensors files: every tensor's name, dtype, shape and data offsets, the
data itself a hole (a sparse file: a few KB on disk for 20 GB of weights). "Will it fit" reads only headers, so
these stand in for the real model in its tests and in a dry run without the downloads:

    from support.zimage_files import write_zimage_headers
    files = write_zimage_headers(Path("zimage-headers"))
    # python -m engine train presets/zimage-lora-16gb.yaml --dry-run --set model.path=<files["folder"]>
    # ... or --set model.path=<files["transformer"]> --set model.text_encoder_path=<files["text_encoder"]>
    #        --set model.vae_path=<files["vae"]>

(safetensors refuses a file shorter than its header says, hence the holes; on Windows they take real disk space,
so the tests that write them run elsewhere). The shapes come from the real configs on the meta device: diffusers'
ZImageTransformer2DModel and FLUX.1's AutoencoderKL, transformers' Qwen3Model.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

# Qwen3-4B as Z-Image's text_encoder/config.json has it (transformers' Qwen3Model)
QWEN3_4B = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
# FLUX.1's AE, which Z-Image uses as it is
FLUX_AE = {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (128, 256, 512, 512),
           "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
           "layers_per_block": 2, "use_quant_conv": False, "use_post_quant_conv": False}
_DTYPES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}


def write_header_only(path: Path, tensors: dict) -> Path:
    """A .safetensors file of `tensors` ({name: (shape, dtype string)}) whose data is a hole of the right length."""
    header, offset = {}, 0
    for name, (shape, dtype) in tensors.items():
        size = _DTYPES[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)   # the data starts 8-byte aligned, as safetensors writes it
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)
    return path


def _shapes(state: dict, dtype: str = "BF16", prefix: str = "") -> dict:
    return {prefix + k: (tuple(v.shape), dtype) for k, v in state.items()}


def real_zimage_tensors() -> dict:
    """{part: {name: (shape, dtype)}} of the real Z-Image in diffusers' layout, from the configs on the meta device."""
    import torch
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    with torch.device("meta"):
        transformer = ZImageTransformer2DModel()
        encoder = Qwen3Model(Qwen3Config(**QWEN3_4B))
        vae = AutoencoderKL(**FLUX_AE)
    return {"transformer": _shapes(transformer.state_dict()), "text_encoder": _shapes(encoder.state_dict()),
            "vae": _shapes(vae.state_dict())}


def native_names(tensors: dict) -> dict:
    """The transformer's tensors in ComfyUI's native names: to_q/to_k/to_v fused into one `attention.qkv` (rows
    q, k, v), `attention.out`, `q_norm`/`k_norm`, `x_embedder`, `final_layer` (memory.py's map, backwards)."""
    out = {}
    for name, (shape, dtype) in tensors.items():
        if ".attention.to_k." in name or ".attention.to_v." in name:
            continue
        if ".attention.to_q." in name:
            name, shape = name.replace(".to_q.", ".qkv."), (3 * shape[0], *shape[1:])
        for diffusers, native in ((".attention.to_out.0.", ".attention.out."),
                                  (".attention.norm_q.", ".attention.q_norm."),
                                  (".attention.norm_k.", ".attention.k_norm.")):
            name = name.replace(diffusers, native)
        for diffusers, native in (("all_x_embedder.2-1.", "x_embedder."), ("all_final_layer.2-1.", "final_layer.")):
            name = native + name[len(diffusers):] if name.startswith(diffusers) else name
        out[name] = (shape, dtype)
    return out


def write_zimage_headers(folder: Path, fp8_blocks: bool = False) -> dict[str, Path]:
    """The real Z-Image as header-only files in `folder`: a diffusers folder (diffusers/: model_index.json,
    transformer/, text_encoder/, vae/) and the files a ComfyUI user has (comfyui/: z_image_bf16.safetensors in the
    native layout, or z_image_fp8_e4m3fn.safetensors with fp8_blocks: the blocks' 2-D weights in F8_E4M3;
    qwen_3_4b.safetensors with Qwen3ForCausalLM's `model.` names; ae.safetensors in the original VAE layout).
    Returns {"folder", "transformer", "text_encoder", "vae"} -> path."""
    from engine.models.families.sd.ldm_convert import vae_state_to_ldm

    folder = Path(folder)
    parts = real_zimage_tensors()
    diffusers = folder / "diffusers"
    files = {"transformer": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors",
             "vae": "diffusion_pytorch_model.safetensors"}
    for part, name in files.items():
        write_header_only(diffusers / part / name, parts[part])
    (diffusers / "model_index.json").write_text(json.dumps(
        {"_class_name": "ZImagePipeline", "transformer": ["diffusers", "ZImageTransformer2DModel"],
         "text_encoder": ["transformers", "Qwen3Model"], "vae": ["diffusers", "AutoencoderKL"]}), encoding="utf-8")
    native = native_names(parts["transformer"])
    if fp8_blocks:
        native = {k: (s, "F8_E4M3" if len(s) == 2 and k.startswith(("layers.", "noise_refiner.", "context_refiner."))
                      else d) for k, (s, d) in native.items()}
    comfyui = folder / "comfyui"
    ae = _ae_layout(parts["vae"], vae_state_to_ldm)
    return {"folder": diffusers,
            "transformer": write_header_only(comfyui / f"z_image_{'fp8_e4m3fn' if fp8_blocks else 'bf16'}.safetensors",
                                             native),
            "text_encoder": write_header_only(comfyui / "qwen_3_4b.safetensors",
                                              {f"model.{k}": v for k, v in parts["text_encoder"].items()}),
            "vae": write_header_only(comfyui / "ae.safetensors", ae)}


def _ae_layout(tensors: dict, to_ldm) -> dict:
    """The AE's tensors in the original layout (vae_state_to_ldm on meta tensors: names and reshaped 1x1 convs)."""
    import torch

    meta = {k: torch.empty(shape, device="meta") for k, (shape, _) in tensors.items()}
    return {k: (tuple(v.shape), "BF16") for k, v in to_ldm(meta, len(FLUX_AE["up_block_types"])).items()}
