"""What Chroma can do (torch-free): a trimmed FLUX.1-schnell (8.9B) conditioned on T5-XXL alone (with its attention
mask), over FLUX.1's AE latents packed 2x2; a rectified flow sampled with flow Euler; real classifier-free guidance
(no distilled guidance input); T5 never trains; bf16; separate ComfyUI files and block swap as for FLUX."""
from __future__ import annotations

from engine.models.families.base import FLOW, Capabilities


def _checks(preset) -> list[tuple[str, str]]:
    """Chroma's blocks have no modulation linears: one small network (distilled_guidance_layer) computes every
    block's modulation, and a kohya file names only the blocks' layers."""
    if preset.network.lora_modulation:
        return [("network.lora_modulation", "Chroma's blocks have no modulation layers (distilled_guidance_layer "
                                            "computes their modulation); use false")]
    return []


CAPABILITIES = {"chroma": Capabilities(
    name="chroma", label="Chroma", a_label="a Chroma", latent_multiple_px=16,
    multiple_why=" (its latents are packed in 2x2 patches)", objectives=("flow",), auto_objective="flow",
    samplers={FLOW: ("default", "flow_euler")}, guidance="cfg", trainable_text_encoders=0, default_precision="bf16",
    separate_files=("t5_path", "vae_path"), block_swap=True, block_swap_max=40,
    block_lists=("transformer_blocks", "single_transformer_blocks"), size_shift=True, checks=_checks,
)}
