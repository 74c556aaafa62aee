"""What FLUX.2 klein can do (torch-free): Black Forest Labs' klein base 4B / 9B (5 + 20 / 8 + 24 double + single
blocks) over the 32-channel FLUX.2 AE's latents in 2x2 patches (128 channels per token), conditioned on three
stacked hidden layers of Qwen3 (4B: Qwen3-4B, 9B: Qwen3-8B); a rectified flow sampled with flow Euler; real
classifier-free guidance on the base, none on the 4-step distilled klein (model.preview_path); the Qwen3 encoder
never trains (its states are cached); bf16; separate ComfyUI files and block swap for 12-16 GB cards."""
from __future__ import annotations

import json
from pathlib import Path

from engine.models.families.base import FLOW, Capabilities


def is_distilled(source: str) -> bool:
    """klein's 4-step distilled model rather than its base: a folder's Flux2KleinPipeline config says so
    (is_distilled); for a file or a Hub id, BFL's names do (FLUX.2-klein-4B is distilled, FLUX.2-klein-base-4B not)."""
    index = Path(source.strip()).expanduser() / "model_index.json"
    if index.is_file():
        try:
            return bool(json.loads(index.read_text(encoding="utf-8")).get("is_distilled", False))
        except (OSError, ValueError):
            pass
    name = Path(source.strip()).name.lower()
    return "klein" in name and "base" not in name


def advice(preset) -> list[tuple[str, str]]:
    """Training the distilled klein itself wears its 4-step distillation away (BFL trains LoRAs on the base; the
    distilled model is for inference): said, with what works instead."""
    m, out = preset.model, []
    if m.path.strip() and is_distilled(m.path) and preset.training.mode == "denoiser":
        out.append(("model.path", "this is the distilled FLUX.2 klein (4 steps): training it directly wears its "
                                  "distillation away. Train on the base (black-forest-labs/FLUX.2-klein-base-4B or "
                                  "-9B) and set model.preview_path to this model to see the LoRA there."))
    if m.preview_path.strip() and not is_distilled(m.preview_path):
        out.append(("model.preview_path", "previews render at the distilled klein's 4 steps without guidance; "
                                          "this does not look like the distilled klein, so its previews may look "
                                          "unfinished."))
    return out


CAPABILITIES = {"flux2": Capabilities(
    name="flux2", label="FLUX.2 klein", a_label="a FLUX.2 klein", latent_multiple_px=16,
    multiple_why=" (its latents are cut into 2x2 patches)", objectives=("flow",), auto_objective="flow",
    samplers={FLOW: ("default", "flow_euler")}, guidance="cfg", trainable_text_encoders=0, default_precision="bf16",
    separate_files=("text_encoder_path", "vae_path"), block_swap=True,
    # musubi-tuner docs/flux_2.md: at most 13 (4B) / 16 (9B) blocks worth swapping with fp8; the 9B's is the cap
    block_swap_max=16, block_lists=("transformer_blocks", "single_transformer_blocks"),
    preview_model="FLUX.2 klein (distilled)", advice=advice, token_patch=1,
)}
