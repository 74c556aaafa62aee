"""Load a Chroma pipeline from a diffusers folder or Hub id, or from the files a ComfyUI user already has:

    model.path               Chroma1-HD.safetensors (BFL layout, in models/diffusion_models/; bf16 or fp8) or a
                             diffusers transformer file
    model.t5_path            t5xxl_fp16.safetensors / t5xxl_fp8_e4m3fn.safetensors (the same file FLUX.1 uses)
    model.vae_path           ae.safetensors (FLUX.1's autoencoder)
    model.single_file_config a ChromaPipeline folder with the configs and tokenizer (no weights needed; a full
                             diffusers copy of Chroma works too, and then its weights fill any file left empty)

As for FLUX (engine/models/separate_files.py holds what the two and Z-Image share), every file is checked by its
tensor names before it is read, so a T5 file given as the transformer, or a FLUX.1 transformer given as Chroma's,
says which key holds which kind of file; fp8 storage happens right after the transformer is read and before T5 is, so
CPU RAM never holds a bf16 transformer (17.8 GB) beside T5 (9.5 GB).
"""
from __future__ import annotations

from pathlib import Path

from engine.models import separate_files as sf
from engine.models.base_storage import bnb_config
from engine.models.families.chroma.bfl_names import KINDS, chroma_to_diffusers, file_kind
from engine.models.families.chroma.caps import CAPABILITIES
from engine.models.families.flux.loading import BFL_PREFIXES, BLOCK_LINEAR
from engine.models.loading import load_pipeline

FILES = sf.SeparateFiles(
    label="Chroma", pipeline="ChromaPipeline", repository="lodestones/Chroma1-HD",
    file_keys={"transformer": ("model.path", "chroma_transformer"), "text_encoder": ("model.t5_path", "t5"),
               "vae": ("model.vae_path", "ae")},
    kinds=KINDS, file_kind=file_kind, diffusers_layout="chroma_transformer_diffusers",
    examples={"transformer": "Chroma1-HD.safetensors", "text_encoder": "t5xxl_fp16.safetensors",
              "vae": "ae.safetensors"},
    comfy_folders={"transformer": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"},
    tokenizers=("tokenizer",),
    transformer_hint="Use the config folder of a Chroma1 model (lodestones/Chroma1-HD or Chroma1-Base: every Chroma1 "
                     "file shares its layout).",
    # what the other files a ComfyUI user has are for, when one lands under a Chroma key
    elsewhere={"clip_l": "Chroma has no CLIP-L: leave it out",
               "flux_transformer": "for FLUX.1, set model.family: flux",
               "flux_transformer_diffusers": "for FLUX.1, set model.family: flux"},
    comfy_note="; FLUX.1's file is the same",
)


def load_chroma_pipeline(model_cfg, dtype, progress):
    """A ChromaPipeline with weights in `dtype` on the CPU; progress(text, n, total) per component."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel
    from transformers import T5EncoderModel

    path = Path(model_cfg.path.strip()).expanduser() if model_cfg.path.strip() else None
    quantization = bnb_config(model_cfg.quantize_base, dtype)
    if path is not None and path.is_file():
        return _from_files(model_cfg, path, dtype, quantization, progress)
    # parts given as files beside a folder or Hub id need a local config folder: checked before minutes of loading
    given = {part: file for part in ("text_encoder", "vae") if (file := sf.given_file(FILES, model_cfg, part))}
    config = sf.config_folder(FILES, model_cfg, Path(model_cfg.path).expanduser()) if given else None
    # the autoencoder first (small; load_pipeline checks the folder or Hub id and says what is wrong), then the
    # transformer (stored in fp8 at once), then T5: the big two are never both in bf16 in RAM
    progress("Loading the autoencoder", 0, 3)
    pipe = load_pipeline(ChromaPipeline, model_cfg, dtype, transformer=None, text_encoder=None)
    progress("Loading the transformer", 1, 3)
    pipe.transformer = _store(sf.from_folder_or_hub(ChromaTransformer2DModel, "transformer", model_cfg.path.strip(),
                                                    dtype, quantization), model_cfg, dtype, progress)
    progress("Loading T5", 2, 3)
    pipe.text_encoder = sf.from_folder_or_hub(T5EncoderModel, "text_encoder", model_cfg.path.strip(), dtype)
    for part, file in given.items():  # a folder model with some parts given as files: those replace the folder's
        setattr(pipe, part, _load_file(part, sf.checked_file(FILES, part, file), config, dtype))
    progress("Chroma loaded", 3, 3)
    return pipe


def _store(transformer, model_cfg, dtype, progress):
    return sf.store_transformer(transformer, model_cfg.quantize_base, dtype, progress,
                                CAPABILITIES["chroma"].block_lists)


def _from_files(model_cfg, transformer_file: Path, dtype, quantization, progress):
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler
    from transformers import T5TokenizerFast

    config = sf.config_folder(FILES, model_cfg, transformer_file)
    files = sf.files_to_read(FILES, model_cfg, config, transformer_file)
    fp8 = model_cfg.quantize_base == "fp8"
    loaded = sf.read_parts(
        FILES, files, config, progress,
        read_file=lambda part, file: _load_file(part, file, config, dtype,
                                                quantization if part == "transformer" else None, fp8=fp8),
        read_folder=lambda part: sf.from_config_folder(_classes()[part], part, config, dtype),
        store=lambda transformer: _store(transformer, model_cfg, dtype, progress))
    return ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(config, subfolder="scheduler"),
                          tokenizer=T5TokenizerFast.from_pretrained(config, subfolder="tokenizer"), **loaded)


def _classes() -> dict:
    from diffusers import AutoencoderKL, ChromaTransformer2DModel
    from transformers import T5EncoderModel

    return {"transformer": ChromaTransformer2DModel, "text_encoder": T5EncoderModel, "vae": AutoencoderKL}


def _load_file(part: str, file: Path, config: Path, dtype, quantization=None, fp8: bool = False):
    if part == "vae":
        return sf.vae_from_file(file, config, dtype)  # FLUX.1's AE
    if part == "text_encoder":
        return _t5_from_file(file, config, dtype)
    if quantization is not None:  # diffusers' converter (full-size Chroma only)
        return sf.transformer_from_single_file(_classes()[part], file, config, dtype, quantization)
    state = sf.read_transformer(file, dtype, fp8, BLOCK_LINEAR, BFL_PREFIXES)  # FLUX's BFL block names
    if any(k.startswith(("double_blocks.", "model.diffusion_model.")) for k in state):
        state = chroma_to_diffusers(state)
    return sf.transformer_from_state(FILES, _classes()[part], state, config, file)


def _t5_from_file(file: Path, config: Path, dtype):
    """T5-XXL's encoder from ComfyUI's t5xxl file (fp16 or fp8: read into `dtype`)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, T5EncoderModel

    state = sf.with_t5_shared({k: v.to(dtype) for k, v in load_file(str(file)).items()})
    return sf.text_encoder_from_state(T5EncoderModel, AutoConfig.from_pretrained(config / "text_encoder"), state,
                                      dtype, "model.t5_path", file, config / "text_encoder",
                                      f"Use T5-XXL's encoder file ({FILES.examples['text_encoder']}), the one FLUX.1 "
                                      f"uses too.")
