"""A tiny FLUX folder as the files a ComfyUI user has (BFL-layout transformer, clip_l, t5xxl, ae), for the tests of
FLUX's single-file loading (engine/models/families/flux/loading.py). The inverse of that loading; the key maps are
bfl_names.py's (transformer) and sd/ldm_convert.py's (CLIP-L and the VAE in the original layout)."""
from __future__ import annotations

import json
from pathlib import Path

from engine.models.families.sd.ldm_convert import clip_to_ldm, load_component, vae_state_to_ldm


def write_flux_files(diffusers_dir: Path, out_dir: Path, transformer_dtype=None) -> dict[str, Path]:
    """Write a FluxPipeline folder as the files a ComfyUI user has: flux1-dev.safetensors (BFL layout; stored in
    `transformer_dtype`, e.g. torch.float8_e4m3fn for the fp8 file), clip_l.safetensors, t5xxl_fp16.safetensors,
    ae.safetensors (LDM VAE layout), and config/ (the folder's configs and tokenizers, without weights).
    Returns {"transformer", "clip_l", "t5", "ae", "config"} -> path."""
    import shutil

    from safetensors.torch import save_file

    from engine.models.families.flux.bfl_names import diffusers_to_bfl

    diffusers_dir, out_dir = Path(diffusers_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae_config = json.loads((diffusers_dir / "vae" / "config.json").read_text(encoding="utf-8"))
    transformer = diffusers_to_bfl(load_component(diffusers_dir / "transformer"))
    if transformer_dtype is not None:
        transformer = {k: v.to(transformer_dtype) for k, v in transformer.items()}
    parts = {
        "transformer": ("flux1-dev.safetensors", transformer),
        "clip_l": ("clip_l.safetensors", clip_to_ldm(load_component(diffusers_dir / "text_encoder"), "text_model.")),
        "t5": ("t5xxl_fp16.safetensors",
               {k: v.half() for k, v in load_component(diffusers_dir / "text_encoder_2").items()}),
        "ae": ("ae.safetensors",
               vae_state_to_ldm(load_component(diffusers_dir / "vae"), len(vae_config["up_block_types"]))),
    }
    paths = {}
    for key, (name, tensors) in parts.items():
        paths[key] = out_dir / name
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(paths[key]))
    config = out_dir / "config"
    shutil.copytree(diffusers_dir, config, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"),
                    dirs_exist_ok=True)
    paths["config"] = config
    return paths
