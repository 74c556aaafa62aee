"""The preset values that move memory, read once into Settings: the estimate reads nothing else of the preset, and
the savers (engine/models/fit/savers.py) try changed copies of it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """The preset values that move memory (fit_settings reads them from a preset; the savers change them)."""

    family: str
    quantize_base: str = "none"
    block_swap: int = 0
    precision: str = "bf16"
    batch_size: int = 1
    gradient_checkpointing: bool = True
    resolution_px: int = 512
    network_type: str = "lora"
    rank: int = 16
    targets: tuple = ()              # empty: the family's default LoRA targets
    lora_modulation: bool = False
    train_text_encoder: bool = False
    cache_text: bool = True          # text-encoder outputs cached, so the encoders leave the GPU (not while one trains)
    cache_latents: bool = True
    optimizer: str = "adamw"
    sgd_momentum: float = 0.0
    text_tokens: int = 0             # T5 tokens per caption; 0: the model's (512 dev, 256 schnell)
    captions: int = 0                # distinct captions, for the text cache in RAM (0: not known)
    text_encoder_fp8: bool = False   # model.text_encoder_fp8: the frozen text encoders' linears in 1 byte
    preview: bool = False            # model.preview_path: a second transformer (Turbo), stored as the base, in RAM
    single_file: bool = False        # model.path is one file: fp8 blocks are read straight into fp8 (families/flux/loading.py)


def local_path(text: str) -> Path:
    """A typed path with ~ expanded; '~nobody/x' (a home folder that does not exist) stays as typed, so it is
    simply not found instead of raising."""
    try:
        return Path(text.strip()).expanduser()
    except RuntimeError:
        return Path(text.strip())


def fit_settings(preset, captions: int = 0) -> Settings:
    """The Settings of a preset (engine.config.schema.Preset); `captions`: distinct captions, when known."""
    m, n, t, d = preset.model, preset.network, preset.training, preset.dataset
    opt = preset.optimizers["unet"]
    momentum = float(opt.params.get("momentum", 0.0) or 0.0) if opt.type == "sgd" else 0.0
    return Settings(
        family=m.family, quantize_base=m.quantize_base, block_swap=m.block_swap,
        precision="bf16" if t.precision == "auto" else t.precision,   # auto trains in a 2-byte type on any GPU
        batch_size=t.batch_size, gradient_checkpointing=t.gradient_checkpointing, resolution_px=d.resolution_px,
        network_type=n.type, rank=n.rank, targets=tuple(n.targets), lora_modulation=n.lora_modulation,
        train_text_encoder=n.train_text_encoder, cache_text=t.cache_text_embeddings and not d.shuffle_tags,
        cache_latents=t.cache_latents and not (d.random_crop or d.flip), optimizer=opt.type,
        sgd_momentum=momentum, text_tokens=t.max_sequence_length, captions=captions,
        single_file=bool(m.path.strip()) and local_path(m.path).is_file(), text_encoder_fp8=m.text_encoder_fp8,
        preview=bool(m.preview_path.strip()))
