"""What Z-Image can do (torch-free): Tongyi-MAI's 6B single-stream DiT (30 layers, 2 noise- and 2 context-refiner
layers) over FLUX.1's 16-channel AE latents in 2x2 patches, conditioned on Qwen3-4B hidden states; a rectified flow
sampled with flow Euler; classifier-free guidance on the base (Turbo is distilled to 8 steps without it); the Qwen3
encoder never trains (its states are cached); bf16; separate ComfyUI files and block swap for 8-16 GB cards."""
from __future__ import annotations

import json
from pathlib import Path

from engine.models.families.base import FLOW, Capabilities

# Which Z-Image a model is: the base (Tongyi-MAI/Z-Image), Turbo (its 8-step distillation) or a de-distilled Turbo
# (ostris' Z-Image-De-Turbo, trained like a base). All three have the same architecture and configs, so the tensors
# cannot tell them apart: the names can (the Hub id, the folder's or file's name, the folder's recorded origin), and
# every Z-Image distribution carries its name.
BASE, TURBO = "base", "turbo"


def variant_of_name(*names: str) -> str:
    """turbo when a name says Turbo (and not De-Turbo), else base."""
    text = " ".join(names).lower().replace("-", "_").replace(" ", "_")
    if "de_turbo" in text or "deturbo" in text or "dedistill" in text:
        return BASE
    return TURBO if "turbo" in text else BASE


def variant_of(model_cfg) -> str:
    """The variant of model.path: its name, and a folder's model_index.json `_name_or_path` when present."""
    source = model_cfg.path.strip()
    names = [source, Path(source).name]
    index = Path(source).expanduser() / "model_index.json"
    if index.is_file():
        try:
            names.append(str(json.loads(index.read_text(encoding="utf-8")).get("_name_or_path", "")))
        except (OSError, ValueError):
            pass
    return variant_of_name(*names)


def advice(preset) -> list[tuple[str, str]]:
    """Training Turbo itself: its 8-step distillation breaks down as the LoRA learns (musubi-tuner docs/zimage.md,
    ai-toolkit's training adapter exists for that reason): said, with what works instead."""
    m = preset.model
    out = []
    if variant_of(m) == TURBO and preset.training.mode == "denoiser":
        out.append(("model.path", "this is Z-Image Turbo, an 8-step distilled model: training it directly wears "
                                  "its distillation away as the LoRA learns. Train on Z-Image base "
                                  "(Tongyi-MAI/Z-Image) or a de-distilled Turbo (ostris/Z-Image-De-Turbo), and set "
                                  "model.preview_path to your Turbo to see the LoRA there."))
    if m.preview_path.strip() and variant_of_name(m.preview_path) != TURBO:
        out.append(("model.preview_path", "previews render at Turbo's 8 steps without guidance; this does not look "
                                          "like a Turbo model, so its previews may look unfinished."))
    return out


CAPABILITIES = {"zimage": Capabilities(
    name="zimage", label="Z-Image", a_label="a Z-Image", latent_multiple_px=16,
    multiple_why=" (its latents are cut into 2x2 patches)", objectives=("flow",), auto_objective="flow",
    samplers={FLOW: ("default", "flow_euler")}, guidance="cfg", trainable_text_encoders=0, default_precision="bf16",
    separate_files=("text_encoder_path", "vae_path"), block_swap=True, block_swap_max=28,
    block_lists=("noise_refiner", "context_refiner", "layers"), preview_model="Z-Image Turbo",
    advice=advice,
)}
