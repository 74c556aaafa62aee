"""model: the base model (family, where it is, how its frozen weights are stored) and the from-scratch DiT."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.config.schema.choices import FAMILIES, OBJECTIVES, QUANTIZE_BASE
from engine.config.schema.field_meta import opt


@dataclass(frozen=True)
class DitConfig:
    """A small DiT trained from scratch (model.family: dit), built on diffusers' DiT transformer."""
    depth: int = opt(6, "Transformer blocks.", min=1, max=64)
    width: int = opt(384, "Hidden width (a multiple of heads).", min=32, max=4096)
    heads: int = opt(6, "Attention heads.", min=1, max=64)
    patch_size: int = opt(2, "Side of the square patches the image is cut into (tokens = (size / patch)^2).",
                          unit="px", min=1, max=32)
    space: str = opt("pixel", "Train on pixels, or on the latents of model.vae_path's VAE (8x smaller).",
                     choices=("pixel", "latent"))
    conditioning: str = opt("none", "none: unconditional; class: one class per sub-folder of the dataset; channels: "
                                    "named .npz arrays stacked as context channels.",
                            choices=("none", "class", "channels"))
    context_arrays: list = opt([], "conditioning channels: the .npz arrays stacked as context channels, in order.")
    target_array: str = opt("", "conditioning channels: the .npz array the model learns to generate.")
    coordinate_grid: bool = opt(False, "conditioning channels: add a 2-channel (y, x) coordinate grid to the context.")
    array_aliases: list = opt(["robot=robot_image"], "Legacy .npz key names, as old=new (the guide's data uses "
                                                     "'robot' for 'robot_image').", advanced=True)


@dataclass(frozen=True)
class ModelConfig:
    family: str = opt("sd15", "Model family of the base model.", choices=FAMILIES)
    path: str = opt("", "Base model: a diffusers folder, a single .safetensors/.ckpt file, or a Hub id "
                        "(e.g. stable-diffusion-v1-5/stable-diffusion-v1-5).", env="MODEL_PATH")
    single_file_config: str = opt("", "For a single-file checkpoint: a local diffusers-format folder with the "
                                      "model's configs and tokenizers (no download needed).", advanced=True)
    prediction_type: str = opt("auto", "What the base model predicts. auto reads the model's scheduler config "
                                       "(SD2-768 models are v_prediction).", choices=OBJECTIVES, advanced=True)
    quantize_base: str = opt("none", "Store the frozen base (a DiT family: the transformer) in less memory: fp8 "
                                     "(half of bf16, computed in bf16; any GPU or the CPU), int8 or nf4 (bitsandbytes, "
                                     "CUDA only).", choices=QUANTIZE_BASE,
                             choice_labels={"none": "none (bf16)", "fp8": "fp8 storage, bf16 compute",
                                            "int8": "int8 (bitsandbytes)", "nf4": "NF4 (bitsandbytes)"})
    vae_path: str = opt("", "Optional separate VAE (folder or file; FLUX, Z-Image, Chroma: ae.safetensors; FLUX.2 "
                            "klein: flux2-vae.safetensors); empty uses the model's own.", advanced=True)
    clip_l_path: str = opt("", "FLUX from single files: the CLIP-L text encoder file (clip_l.safetensors). Empty: "
                               "from model.path's folder.", advanced=True)
    t5_path: str = opt("", "FLUX from single files: the T5-XXL text encoder file (t5xxl_fp16.safetensors or "
                           "t5xxl_fp8_e4m3fn.safetensors). Empty: from model.path's folder.", advanced=True)
    text_encoder_fp8: bool = opt(False, "Store the frozen text encoder in fp8 (computed in bf16) while it encodes the "
                                        "captions: Qwen3-4B (Z-Image, klein 4B) takes 4 GB instead of 8, FLUX's T5 "
                                        "4.8 instead of 9.5, so that pass fits 8 GB cards; the cached text differs "
                                        "slightly (musubi-tuner's fp8_llm).", advanced=True)
    text_encoder_path: str = opt("", "Z-Image and FLUX.2 klein from single files: the Qwen3 text encoder file "
                                     "(qwen_3_4b.safetensors; the klein 9B's Qwen3-8B file), in ComfyUI's "
                                     "models/text_encoders/. Empty: from model.path's folder.", advanced=True)
    preview_path: str = opt("", "A distilled model of the same family (Z-Image Turbo, the distilled FLUX.2 klein) on "
                                "which every sample is also "
                                "rendered with the LoRA being trained, at that model's own steps and guidance: train "
                                "on the base, see the LoRA where you will use it. A folder, a transformer file or a "
                                "Hub id; empty: none.", advanced=True)
    dit: DitConfig = field(default_factory=DitConfig)
    block_swap: int = opt(0, "FLUX, FLUX.2, Z-Image, Chroma: keep this many transformer blocks in CPU RAM and "
                             "bring each to the GPU while it runs (less VRAM, slower; 0 = off).", unit="blocks",
                          min=0, max=57, advanced=True)
