"""A tiny FLUX.2 klein folder as the files a ComfyUI user has (the transformer in BFL's layout, qwen_3_4b,
flux2-vae), for the tests of klein's single-file loading (flux2/loading.py): the inverse of that loading."""
from __future__ import annotations

from pathlib import Path

from engine.models.families.sd.ldm_convert import load_component
from engine.models.separate_files import ae_tensors, write_component_files


def write_flux2_files(diffusers_dir: Path, out_dir: Path, transformer_dtype=None,
                      transformer_name: str = "flux-2-klein-base-4b.safetensors") -> dict[str, Path]:
    """Write a Flux2KleinPipeline folder as the files a ComfyUI user has: the transformer in BFL's layout (stored in
    `transformer_dtype`, e.g. torch.float8_e4m3fn for an fp8 file), qwen_3_4b.safetensors (Qwen3ForCausalLM's names,
    without the tied lm_head, as ComfyUI ships it), flux2-vae.safetensors (the original AE layout with its
    batch-norm statistics), and config/ (the folder's configs and tokenizer). Returns {"transformer",
    "text_encoder", "ae", "config"} -> path."""
    from engine.models.families.flux2.bfl_names import diffusers_to_bfl

    diffusers_dir = Path(diffusers_dir)
    text_encoder = {k: v for k, v in load_component(diffusers_dir / "text_encoder").items()
                    if not k.startswith("lm_head.")}
    return write_component_files(diffusers_dir, out_dir, {
        "transformer": (transformer_name, diffusers_to_bfl(load_component(diffusers_dir / "transformer"))),
        "text_encoder": ("qwen_3_4b.safetensors", text_encoder),
        "ae": ("flux2-vae.safetensors", ae_tensors(diffusers_dir)),
    }, transformer_dtype)
