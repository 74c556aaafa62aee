"""What FLUX.1 can do (torch-free): a rectified-flow transformer on 2x2-packed latents, sampled with flow Euler
shifted by the image size; dev's guidance is distilled into an input; CLIP-L may train, T5 never; bf16 always
(its activations overflow fp16); separate ComfyUI files, block swap for 12-16 GB cards."""
from __future__ import annotations

from engine.models.families.base import FLOW, Capabilities

CAPABILITIES = {"flux": Capabilities(
    name="flux", label="FLUX.1", a_label="a FLUX.1", latent_multiple_px=16, multiple_why=" (its latents are packed in 2x2 patches)",
    objectives=("flow",), auto_objective="flow", samplers={FLOW: ("default", "flow_euler")}, guidance="embedded",
    trainable_text_encoders=1, default_precision="bf16", separate_files=("clip_l_path", "t5_path"),
    block_swap=True, block_swap_max=40, block_lists=("transformer_blocks", "single_transformer_blocks"),
    size_shift=True,
)}
