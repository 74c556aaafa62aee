"""Load a FLUX.1 pipeline from a diffusers folder or Hub id, or from the single files a ComfyUI user already has:

    model.path               flux1-dev.safetensors (BFL layout; bf16 or fp8) or a diffusers transformer file
    model.clip_l_path        clip_l.safetensors
    model.t5_path            t5xxl_fp16.safetensors / t5xxl_fp8_e4m3fn.safetensors
    model.vae_path           ae.safetensors
    model.single_file_config a FluxPipeline folder with the configs and tokenizers (no weights needed; a full
                             diffusers copy of FLUX works too, and then its weights fill any file left empty)

Every file is checked by its tensor names before it is read (engine/models/separate_files.py, shared with Chroma and
Z-Image), so a T5 file given as the transformer (or any other mix-up) says which key holds which kind of file. fp8
files are read into the compute dtype; model.quantize_base decides how the transformer is stored
(engine/models/base_storage.py): fp8 happens right after the transformer is read and before the text encoders are,
so CPU RAM never holds a bf16 transformer (24 GB) beside T5 (9.5 GB).
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.models import separate_files as sf
from engine.models.base_storage import bnb_config
from engine.models.families.flux.bfl_names import KINDS, bfl_to_diffusers, file_kind
from engine.models.families.flux.caps import CAPABILITIES
from engine.models.loading import load_pipeline

FILES = sf.SeparateFiles(
    label="FLUX", pipeline="FluxPipeline", repository="FLUX.1-dev or -schnell",
    file_keys={"transformer": ("model.path", "flux_transformer"), "text_encoder": ("model.clip_l_path", "clip_l"),
               "text_encoder_2": ("model.t5_path", "t5"), "vae": ("model.vae_path", "ae")},
    kinds=KINDS, file_kind=file_kind, diffusers_layout="flux_transformer_diffusers",
    examples={"transformer": "flux1-dev.safetensors", "text_encoder": "clip_l.safetensors",
              "text_encoder_2": "t5xxl_fp16.safetensors", "vae": "ae.safetensors"},
    comfy_folders={"transformer": "diffusion_models", "text_encoder": "text_encoders",
                   "text_encoder_2": "text_encoders", "vae": "vae"},
    tokenizers=("tokenizer", "tokenizer_2"),
    transformer_hint="Use the config folder of the same model (FLUX.1-dev for flux1-dev files, FLUX.1-schnell for "
                     "flux1-schnell files).",
)


def load_flux_pipeline(model_cfg, dtype, progress):
    """A FluxPipeline with weights in `dtype` on the CPU; progress(text, n, total) per component."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import T5EncoderModel

    path = Path(model_cfg.path.strip()).expanduser() if model_cfg.path.strip() else None
    quantization = bnb_config(model_cfg.quantize_base, dtype)
    if path is not None and path.is_file():
        return _from_files(model_cfg, path, dtype, quantization, progress)
    # parts given as files beside a folder or Hub id need a local config folder: checked before minutes of loading
    given = {part: file for part in ("text_encoder", "text_encoder_2", "vae")
             if (file := sf.given_file(FILES, model_cfg, part))}
    config = sf.config_folder(FILES, model_cfg, Path(model_cfg.path).expanduser()) if given else None
    # CLIP-L and the autoencoder first (small; load_pipeline checks the folder or Hub id and says what is wrong),
    # then the transformer (stored in fp8 at once), then T5: the big two are never both in bf16 in RAM
    progress("Loading CLIP-L and the autoencoder", 0, 3)
    pipe = load_pipeline(FluxPipeline, model_cfg, dtype, transformer=None, text_encoder_2=None)
    progress("Loading the transformer", 1, 3)
    pipe.transformer = _store(sf.from_folder_or_hub(FluxTransformer2DModel, "transformer", model_cfg.path.strip(),
                                                    dtype, quantization), model_cfg, dtype, progress)
    progress("Loading T5", 2, 3)
    pipe.text_encoder_2 = sf.from_folder_or_hub(T5EncoderModel, "text_encoder_2", model_cfg.path.strip(), dtype)
    for part, file in given.items():  # e.g. a fine-tuned clip_l.safetensors: it replaces the folder's
        setattr(pipe, part, _load_part(part, sf.checked_file(FILES, part, file), config, dtype))
    progress("FLUX loaded", 3, 3)
    return pipe


def _store(transformer, model_cfg, dtype, progress):
    return sf.store_transformer(transformer, model_cfg.quantize_base, dtype, progress,
                                CAPABILITIES["flux"].block_lists)


def _from_files(model_cfg, transformer_file: Path, dtype, quantization, progress):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    config = sf.config_folder(FILES, model_cfg, transformer_file)
    files = sf.files_to_read(FILES, model_cfg, config, transformer_file)
    fp8 = model_cfg.quantize_base == "fp8"
    loaded = sf.read_parts(
        FILES, files, config, progress,
        read_file=lambda part, file: _load_part(part, file, config, dtype,
                                                quantization if part == "transformer" else None, fp8=fp8),
        read_folder=lambda part: sf.from_config_folder(_classes()[part], part, config, dtype),
        store=lambda transformer: _store(transformer, model_cfg, dtype, progress))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(config, subfolder="scheduler"),
                        tokenizer=CLIPTokenizer.from_pretrained(config, subfolder="tokenizer"),
                        tokenizer_2=T5TokenizerFast.from_pretrained(config, subfolder="tokenizer_2"), **loaded)


def _classes() -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    return {"transformer": FluxTransformer2DModel, "text_encoder": CLIPTextModel, "text_encoder_2": T5EncoderModel,
            "vae": AutoencoderKL}


# BFL block tensors that layerwise casting keeps in fp8: every Linear's weight and bias (not the RMSNorm scales)
BLOCK_LINEAR = re.compile(r"^(double_blocks|single_blocks)\.\d+\.(?!.*norm\.)[\w.]+\.(weight|bias)$")
BFL_PREFIXES = ("model.diffusion_model.",)


def _load_part(part: str, file: Path, config: Path, dtype, quantization=None, fp8: bool = False):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    if part == "vae":
        return sf.vae_from_file(file, config, dtype)
    if part == "transformer" and quantization is not None:  # diffusers' converter (full-size FLUX only)
        return sf.transformer_from_single_file(_classes()[part], file, config, dtype, quantization)
    if part == "transformer":
        state = sf.read_transformer(file, dtype, fp8, BLOCK_LINEAR, BFL_PREFIXES)
        if any(k.startswith(("double_blocks.", "model.diffusion_model.")) for k in state):
            state = bfl_to_diffusers(state)
        return sf.transformer_from_state(FILES, _classes()[part], state, config, file)
    state = load_file(str(file))
    if part == "text_encoder_2":
        state = sf.with_t5_shared(state)
    return sf.text_encoder_from_state(_classes()[part], AutoConfig.from_pretrained(config / part), state, dtype,
                                      FILES.file_keys[part][0], file, config / part,
                                      f"Use the {FILES.examples[part]} of the same model as the config folder.")
