"""SD 1.x and SD 2.x's memory model for "will it fit" (engine/models/fit/), and the UNet activation model SDXL's
shares. Torch-free, like fit (the GUI's gauge imports it).

Without local files the sizes of the real models stand in: SD1.5 UNet 859,520,964 parameters, SD2 UNet 865,910,724
(counted from the diffusers configs on the meta device), CLIP-L 123,060,480, OpenCLIP-H 340,387,840.
UNet activations at the peak: KiB per latent pixel x (H/8)(W/8) x batch. The peaks per latent pixel (LoRA rank 16 on
attention, bf16 autocast; saved-tensor hooks and torch.profiler's memory timeline on the CPU; without / with
checkpointing): SD1.5 222 / 58 KiB, SD2 210 / 48, SDXL 400 / 51 (sdxl/memory.py).
"""
from __future__ import annotations

from functools import partial

from engine.models.fit.family import FamilyMemory
from engine.models.fit.headers import Component
from engine.models.fit.settings import Settings

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")   # record.py's UNET_ATTENTION
# the original (LDM) checkpoint's key prefixes -> the diffusers component (SD 1.x, SD 2.x and SDXL files)
LDM_PREFIXES = {"model.diffusion_model.": "unet", "first_stage_model.": "vae", "cond_stage_model.": "text_encoder",
                "conditioner.embedders.0.": "text_encoder", "conditioner.embedders.1.": "text_encoder_2"}
_SD_TEXT = ("text_encoder",)


def unet_activations(peak_kib: tuple[float, float], c: Component, s: Settings, text_tokens: int) -> tuple[float, int]:
    """(bytes of UNet activations at the peak of a step, 0): peak_kib per latent pixel (without, with checkpointing)."""
    kib = peak_kib[1] if s.gradient_checkpointing else peak_kib[0]
    return kib * 1024 * (s.resolution_px // 8) ** 2 * s.batch_size, 0


MEMORY = {
    "sd15": FamilyMemory(
        "SD 1.5", "unet", _SD_TEXT, ("CLIP-L",), _SD_TEXT, UNET_TARGETS, partial(unet_activations, (222.0, 58.0)),
        (77, 77), 768, _SD_TEXT, {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
        known_lora_per_rank=199_296, known_fp8_bnb=(857_246_720, 270_049_280), single_file_prefixes=LDM_PREFIXES),
    "sd2": FamilyMemory(
        "SD 2.x", "unet", _SD_TEXT, ("OpenCLIP-H",), _SD_TEXT, UNET_TARGETS, partial(unet_activations, (210.0, 48.0)),
        (77, 77), 1024, _SD_TEXT, {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
        known_lora_per_rank=207_488, known_fp8_bnb=(863_636_480, 301_219_840), single_file_prefixes=LDM_PREFIXES),
}
