"""SDXL's memory model for "will it fit" (engine/models/fit/): a UNet like SD's (sd/memory.py's activation model,
its peaks per latent pixel 400 / 51 KiB without / with checkpointing) with two text encoders, CLIP-L and
OpenCLIP-bigG. Without local files the real model's sizes stand in: UNet 2,567,463,684 parameters, CLIP-L
123,060,480, OpenCLIP-bigG 694,659,840. Torch-free, like fit."""
from __future__ import annotations

from functools import partial

from engine.models.families.sd.memory import LDM_PREFIXES, UNET_TARGETS, unet_activations
from engine.models.fit.family import FamilyMemory

MEMORY = {"sdxl": FamilyMemory(
    "SDXL", "unet", ("text_encoder", "text_encoder_2"), ("CLIP-L", "OpenCLIP-bigG"),
    ("text_encoder", "text_encoder_2"), UNET_TARGETS, partial(unet_activations, (400.0, 51.0)), (77, 77), 2048,
    ("text_encoder", "text_encoder_2"),
    {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863},
    known_lora_per_rank=1_451_520, known_fp8_bnb=(2_559_556_160, 2_232_647_680),
    single_file_prefixes=LDM_PREFIXES)}
