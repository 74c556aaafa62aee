"""A tiny Z-Image folder as the files a ComfyUI user has (the transformer in the original layout, qwen_3_4b, ae),
for the tests of Z-Image's single-file loading (zimage/loading.py): the inverse of that loading."""
from __future__ import annotations

from pathlib import Path

from engine.models.families.sd.ldm_convert import load_component
from engine.models.separate_files import ae_tensors, write_component_files


def write_zimage_files(diffusers_dir: Path, out_dir: Path, transformer_dtype=None) -> dict[str, Path]:
    """Write a ZImagePipeline folder as the files a ComfyUI user has: z_image_bf16.safetensors (the original layout,
    fused q/k/v; stored in `transformer_dtype`, e.g. torch.float8_e4m3fn for an fp8 file), qwen_3_4b.safetensors
    (Qwen3ForCausalLM's `model.` names), ae.safetensors (LDM VAE layout), and config/ (the folder's configs and
    tokenizer, without weights). Returns {"transformer", "text_encoder", "ae", "config"} -> path."""
    from engine.models.families.zimage.names import diffusers_to_original

    diffusers_dir = Path(diffusers_dir)
    return write_component_files(diffusers_dir, out_dir, {
        "transformer": ("z_image_bf16.safetensors",
                        diffusers_to_original(load_component(diffusers_dir / "transformer"))),
        "text_encoder": ("qwen_3_4b.safetensors",
                         {f"model.{k}": v for k, v in load_component(diffusers_dir / "text_encoder").items()}),
        "ae": ("ae.safetensors", ae_tensors(diffusers_dir)),
    }, transformer_dtype)
