"""A tiny FLUX folder as the files a ComfyUI user has (BFL-layout transformer, clip_l, t5xxl, ae), for the tests of
FLUX's single-file loading (engine/models/families/flux/loading.py). The inverse of that loading; the key maps are
bfl_names.py's (transformer) and sd/ldm_convert.py's (CLIP-L and the VAE in the original layout)."""
from __future__ import annotations

from pathlib import Path

from engine.models.families.sd.ldm_convert import clip_to_ldm, load_component
from engine.models.separate_files import ae_tensors, write_component_files


def write_flux_files(diffusers_dir: Path, out_dir: Path, transformer_dtype=None) -> dict[str, Path]:
    """Write a FluxPipeline folder as the files a ComfyUI user has: flux1-dev.safetensors (BFL layout; stored in
    `transformer_dtype`, e.g. torch.float8_e4m3fn for the fp8 file), clip_l.safetensors, t5xxl_fp16.safetensors,
    ae.safetensors (LDM VAE layout), and config/ (the folder's configs and tokenizers, without weights).
    Returns {"transformer", "clip_l", "t5", "ae", "config"} -> path."""
    from engine.models.families.flux.bfl_names import diffusers_to_bfl

    diffusers_dir = Path(diffusers_dir)
    return write_component_files(diffusers_dir, out_dir, {
        "transformer": ("flux1-dev.safetensors", diffusers_to_bfl(load_component(diffusers_dir / "transformer"))),
        "clip_l": ("clip_l.safetensors", clip_to_ldm(load_component(diffusers_dir / "text_encoder"), "text_model.")),
        "t5": ("t5xxl_fp16.safetensors",
               {k: v.half() for k, v in load_component(diffusers_dir / "text_encoder_2").items()}),
        "ae": ("ae.safetensors", ae_tensors(diffusers_dir)),
    }, transformer_dtype)
