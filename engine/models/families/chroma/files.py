"""A tiny Chroma folder as the files a ComfyUI user has (a BFL-layout transformer, t5xxl, ae), for the tests of
Chroma's single-file loading (engine/models/families/chroma/loading.py). The inverse of that loading; the key maps
are chroma/bfl_names.py's (transformer) and sd/ldm_convert.py's (the VAE in the original layout)."""
from __future__ import annotations

from pathlib import Path

from engine.models.families.sd.ldm_convert import load_component
from engine.models.separate_files import ae_tensors, write_component_files


def write_chroma_files(diffusers_dir: Path, out_dir: Path, transformer_dtype=None) -> dict[str, Path]:
    """Write a ChromaPipeline folder as the files a ComfyUI user has: Chroma1-HD.safetensors (BFL layout; stored in
    `transformer_dtype`, e.g. torch.float8_e4m3fn for an fp8 file), t5xxl_fp16.safetensors, ae.safetensors (LDM VAE
    layout), and config/ (the folder's configs and tokenizer, without weights).
    Returns {"transformer", "t5", "ae", "config"} -> path."""
    from engine.models.families.chroma.bfl_names import diffusers_to_chroma

    diffusers_dir = Path(diffusers_dir)
    return write_component_files(diffusers_dir, out_dir, {
        "transformer": ("Chroma1-HD.safetensors", diffusers_to_chroma(load_component(diffusers_dir / "transformer"))),
        "t5": ("t5xxl_fp16.safetensors",
               {k: v.half() for k, v in load_component(diffusers_dir / "text_encoder").items()}),
        "ae": ("ae.safetensors", ae_tensors(diffusers_dir)),
    }, transformer_dtype)
