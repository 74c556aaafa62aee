"""Load a Z-Image pipeline from a diffusers folder or Hub id, or from the files a ComfyUI user already has:

    model.path               z_image_bf16.safetensors / z_image_turbo_fp8 ... (ComfyUI's diffusion_models/; the
                             original layout with fused q/k/v, or a diffusers transformer file)
    model.text_encoder_path  qwen_3_4b.safetensors (ComfyUI's text_encoders/)
    model.vae_path           ae.safetensors (FLUX.1's autoencoder)
    model.single_file_config a ZImagePipeline folder with the configs and tokenizer (no weights needed; a full
                             diffusers copy works too, and then its weights fill any file left empty)

Every file is checked by its tensor names before it is read (engine/models/separate_files.py, shared with FLUX and
Chroma), so a Qwen3 file given as the transformer (or any other mix-up) says which key holds which kind of file.
model.quantize_base fp8 stores the transformer's block linears in float8 as they are read, before the text encoder
is, so CPU RAM never holds a bf16 transformer (12 GB) beside Qwen3 (8 GB).
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.failures import UserError
from engine.models import separate_files as sf
from engine.models.base_storage import bnb_config
from engine.models.families.zimage.caps import CAPABILITIES
from engine.models.families.zimage.names import KINDS, PREFIXES, file_kind, original_to_diffusers
from engine.models.loading import HUB_ID, load_pipeline

FILES = sf.SeparateFiles(
    label="Z-Image", pipeline="ZImagePipeline", repository="Tongyi-MAI/Z-Image",
    file_keys={"transformer": ("model.path", "zimage_transformer"),
               "text_encoder": ("model.text_encoder_path", "qwen3"), "vae": ("model.vae_path", "ae")},
    kinds=KINDS, file_kind=file_kind, diffusers_layout="zimage_transformer_diffusers",
    examples={"transformer": "z_image_bf16.safetensors", "text_encoder": "qwen_3_4b.safetensors",
              "vae": "ae.safetensors"},
    comfy_folders={"transformer": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"},
    tokenizers=("tokenizer",),
    transformer_hint="Use the config folder of a Z-Image model (Tongyi-MAI/Z-Image or Z-Image-Turbo: both have the "
                     "same configs).",
)
# block tensors that layerwise casting keeps in fp8: every Linear's weight and bias (not the RMSNorm scales)
_BLOCK_LINEAR = re.compile(r"^(noise_refiner|context_refiner|layers)\.\d+\.(?!.*norm)[\w.]+\.(weight|bias)$")
_BLOCK_OF = re.compile(r"^(noise_refiner|context_refiner|layers)\.\d+\.")


def load_zimage_pipeline(model_cfg, dtype, progress):
    """A ZImagePipeline with weights in `dtype` on the CPU; progress(text, n, total) per component."""
    from diffusers import ZImagePipeline

    source = model_cfg.path.strip()
    path = Path(source).expanduser() if source else None
    quantization = bnb_config(model_cfg.quantize_base, dtype)
    if path is not None and path.is_file():
        return _from_files(model_cfg, path, dtype, quantization, progress)
    if path is None or (path.is_dir() and not (path / "model_index.json").is_file()) or \
            (not path.exists() and not HUB_ID.match(source)):
        load_pipeline(ZImagePipeline, model_cfg, dtype)  # says what is wrong with an empty, foreign or missing path
    # a folder or Hub id with some parts given as files: those replace its own, read with a local config folder
    # (the folder itself, or model.single_file_config for a Hub id), which is checked before minutes of loading
    given = {part: file for part in ("text_encoder", "vae") if (file := sf.given_file(FILES, model_cfg, part))}
    config = sf.config_folder(FILES, model_cfg, path) if given else None
    # the transformer first (stored in fp8 at once), then the text encoder: the big two never both in bf16 in RAM
    progress("Loading the transformer", 0, 3)
    transformer = store(transformer_from_folder_or_hub(source, dtype, quantization), model_cfg, dtype, progress)
    progress("Loading Qwen3 and the autoencoder", 1, 3)
    pipe = load_pipeline(ZImagePipeline, model_cfg, dtype, transformer=transformer)
    for part, file in given.items():
        setattr(pipe, part, _load_part(part, sf.checked_file(FILES, part, file), config, dtype))
    progress("Z-Image loaded", 3, 3)
    return pipe


def store(transformer, model_cfg, dtype, progress):
    """fp8 storage as soon as the transformer is read (int8 / nf4 happened while reading)."""
    return sf.store_transformer(transformer, model_cfg.quantize_base, dtype, progress,
                                CAPABILITIES["zimage"].block_lists)


def transformer_from_folder_or_hub(source: str, dtype, quantization=None, key: str = "model.path"):
    from diffusers import ZImageTransformer2DModel

    local = Path(source).expanduser()
    try:
        return sf.from_folder_or_hub(ZImageTransformer2DModel, "transformer", source, dtype, quantization)
    except (OSError, ValueError) as e:
        if local.is_dir():
            raise UserError(f"{key}: {local} has no readable transformer/ (a ZImagePipeline folder holds "
                            f"model_index.json, transformer/, text_encoder/, vae/ ...).",
                            f"Download the model folder again, or point {key} at your Z-Image transformer "
                            "file.") from e
        raise UserError(f"{key}: '{source}' is not a folder or file on this PC, and it could not be loaded "
                        f"from the Hugging Face Hub: {str(e).splitlines()[0]}",
                        f"Download it once (e.g. `hf download {source} --local-dir models/"
                        f"{source.split('/')[-1]}`) and set {key} to that folder.") from e


def _from_files(model_cfg, transformer_file: Path, dtype, quantization, progress):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import AutoTokenizer

    config = sf.config_folder(FILES, model_cfg, transformer_file)
    files = sf.files_to_read(FILES, model_cfg, config, transformer_file)
    fp8 = model_cfg.quantize_base == "fp8"
    loaded = sf.read_parts(
        FILES, files, config, progress,
        read_file=lambda part, file: _load_part(part, file, config, dtype,
                                                quantization if part == "transformer" else None, fp8=fp8,
                                                progress=progress),
        read_folder=lambda part: sf.from_config_folder(_classes()[part], part, config, dtype),
        store=lambda transformer: store(transformer, model_cfg, dtype, progress))
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(config, subfolder="scheduler"),
                          tokenizer=AutoTokenizer.from_pretrained(config, subfolder="tokenizer"), **loaded)


def load_transformer(source: str, model_cfg, dtype, progress, key: str = "model.path"):
    """A Z-Image transformer alone from a file (either layout; its config from model.single_file_config or the
    model.path folder) or a folder / Hub id, stored as model.quantize_base says: the distilled model of
    model.preview_path (zimage/preview.py)."""
    path = Path(source).expanduser()
    quantization = bnb_config(model_cfg.quantize_base, dtype)
    if path.is_file():
        base = Path(model_cfg.path.strip()).expanduser()
        config = sf.config_folder(FILES, model_cfg, base if base.is_dir() else path)
        transformer = _load_part("transformer", sf.checked_file(FILES, "transformer", source, key), config, dtype,
                                 quantization, fp8=model_cfg.quantize_base == "fp8", progress=progress)
    else:
        transformer = transformer_from_folder_or_hub(source, dtype, quantization, key)
    return store(transformer, model_cfg, dtype, progress)


def _classes() -> dict:
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import AutoModel

    return {"transformer": ZImageTransformer2DModel, "text_encoder": AutoModel, "vae": AutoencoderKL}


def _load_part(part: str, file: Path, config: Path, dtype, quantization=None, fp8: bool = False, progress=None):
    if part == "vae":
        return sf.vae_from_file(file, config, dtype)
    if part == "transformer" and quantization is not None:  # diffusers' converter reads the original layout
        return sf.transformer_from_single_file(_classes()[part], file, config, dtype, quantization)
    if part == "transformer":
        state = sf.read_transformer(file, dtype, fp8, _BLOCK_LINEAR, PREFIXES, _BLOCK_OF, progress)
        return sf.transformer_from_state(FILES, _classes()[part], original_to_diffusers(state), config, file)
    return _text_encoder_from_file(file, config, dtype)


def _text_encoder_from_file(file: Path, config: Path, dtype):
    """ComfyUI's qwen_3_4b.safetensors names the layers as Qwen3ForCausalLM does (`model.layers...`, maybe with
    lm_head); the pipeline's encoder is the bare Qwen3Model."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    state = {k.removeprefix("model."): v for k, v in load_file(str(file)).items() if not k.startswith("lm_head.")}
    te_config = AutoConfig.from_pretrained(config / "text_encoder")
    cls = AutoModel._model_mapping[type(te_config)]  # Qwen3Model for Z-Image's config
    return sf.text_encoder_from_state(cls, te_config, state, dtype, "model.text_encoder_path", file,
                                      config / "text_encoder",
                                      "Use qwen_3_4b.safetensors (Z-Image's Qwen3-4B), with a Z-Image config folder.")
