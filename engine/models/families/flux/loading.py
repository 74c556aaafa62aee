"""Load a FLUX.1 pipeline from a diffusers folder or Hub id, or from the single files a ComfyUI user already has:

    model.path               flux1-dev.safetensors (BFL layout; bf16 or fp8) or a diffusers transformer file
    model.clip_l_path        clip_l.safetensors
    model.t5_path            t5xxl_fp16.safetensors / t5xxl_fp8_e4m3fn.safetensors
    model.vae_path           ae.safetensors
    model.single_file_config a FluxPipeline folder with the configs and tokenizers (no weights needed; a full
                             diffusers copy of FLUX works too, and then its weights fill any file left empty)

Every file is checked by its tensor names before it is read, so a T5 file given as the transformer (or any other
mix-up) says which key holds which kind of file. fp8 files are read into the compute dtype; model.quantize_base
decides how the transformer is stored (engine/models/base_storage.py): fp8 happens right after the transformer is
read and before the text encoders are, so CPU RAM never holds a bf16 transformer (24 GB) beside T5 (9.5 GB).
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.failures import UserError
from engine.models.base_storage import bnb_config, store_in_fp8
from engine.models.families.flux.caps import CAPABILITIES
from engine.models.families.flux.bfl_names import KINDS, bfl_to_diffusers, file_kind
from engine.models.loading import load_pipeline, missing_config_parts

FILE_KEYS = {"transformer": ("model.path", "flux_transformer"), "text_encoder": ("model.clip_l_path", "clip_l"),
             "text_encoder_2": ("model.t5_path", "t5"), "vae": ("model.vae_path", "ae")}
PARTS = ("transformer", "text_encoder", "text_encoder_2", "vae")


def load_flux_pipeline(model_cfg, dtype, progress):
    """A FluxPipeline with weights in `dtype` on the CPU; progress(text, n, total) per component."""
    from diffusers import FluxPipeline

    path = Path(model_cfg.path.strip()).expanduser() if model_cfg.path.strip() else None
    quantization = bnb_config(model_cfg.quantize_base, dtype)
    if path is not None and path.is_file():
        return _from_files(model_cfg, path, dtype, quantization, progress)
    # CLIP-L and the autoencoder first (small; load_pipeline checks the folder or Hub id and says what is wrong),
    # then the transformer (stored in fp8 at once), then T5: the big two are never both in bf16 in RAM
    progress("Loading CLIP-L and the autoencoder", 0, 3)
    pipe = load_pipeline(FluxPipeline, model_cfg, dtype, transformer=None, text_encoder_2=None)
    progress("Loading the transformer", 1, 3)
    pipe.transformer = _store(_from_folder_or_hub("transformer", model_cfg.path.strip(), dtype, quantization),
                              model_cfg, dtype, progress)
    progress("Loading T5", 2, 3)
    pipe.text_encoder_2 = _from_folder_or_hub("text_encoder_2", model_cfg.path.strip(), dtype)
    _replace_parts_from_files(pipe, model_cfg, dtype, progress)
    progress("FLUX loaded", 3, 3)
    return pipe


def _store(transformer, model_cfg, dtype, progress):
    """fp8 storage as soon as the transformer is read (int8 / nf4 happened while reading)."""
    if model_cfg.quantize_base == "fp8":
        store_in_fp8(transformer, dtype, lambda n, total: progress("Storing the transformer in fp8, block by block",
                                                                   n, total), CAPABILITIES["flux"].block_lists)
        size = sum(p.numel() * p.element_size() for p in transformer.parameters())
        progress(f"Transformer in fp8: {size / 2**30:.2f} GB", 1, 1)
        transformer.easel_fp8 = True  # setup's store_base sees it is done
    return transformer


def _from_folder_or_hub(part: str, source: str, dtype, quantization=None):
    import os

    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    local = Path(source).expanduser()
    offline = local.is_dir() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    extra = {"quantization_config": quantization} if quantization is not None else {}
    cls = FluxTransformer2DModel if part == "transformer" else T5EncoderModel
    return cls.from_pretrained(local if local.is_dir() else source, subfolder=part, dtype=dtype,
                               local_files_only=offline, **extra)


def _replace_parts_from_files(pipe, model_cfg, dtype, progress):
    """A folder model with some parts given as files (e.g. a fine-tuned clip_l.safetensors): those replace the
    folder's."""
    config = _config_folder(model_cfg, Path(model_cfg.path).expanduser())
    for part in ("text_encoder", "text_encoder_2", "vae"):
        key, _ = FILE_KEYS[part]
        file = getattr(model_cfg, key.split(".")[1]).strip()
        if file:
            setattr(pipe, part, _load_part(part, _checked_file(part, file), config, dtype))


def _from_files(model_cfg, transformer_file: Path, dtype, quantization, progress):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    config = _config_folder(model_cfg, transformer_file)
    files = {"transformer": _checked_file("transformer", str(transformer_file))}
    for part in ("text_encoder", "text_encoder_2", "vae"):
        key, _ = FILE_KEYS[part]
        given = getattr(model_cfg, key.split(".")[1]).strip()
        if given:
            files[part] = _checked_file(part, given)
        elif not _has_weights(config / part):
            raise UserError(f"{key} is empty, and model.single_file_config ({config}) has no {part} weights either: "
                            f"loading FLUX from single files needs the {KINDS[FILE_KEYS[part][1]]} file.",
                            f"Set {key} to your {_example(part)} (in ComfyUI it is in models/"
                            f"{'vae' if part == 'vae' else 'text_encoders'}/).")
    loaded = {}
    for n, part in enumerate(PARTS):
        progress(f"Loading {part} from {files[part].name if part in files else config / part}", n, len(PARTS))
        if part in files:
            loaded[part] = _load_part(part, files[part], config, dtype, quantization if part == "transformer" else None,
                                      fp8=model_cfg.quantize_base == "fp8")
        else:
            loaded[part] = _load_from_folder(part, config, dtype)
        if part == "transformer":
            loaded[part] = _store(loaded[part], model_cfg, dtype, progress)
    progress("FLUX loaded", len(PARTS), len(PARTS))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(config, subfolder="scheduler"),
                        tokenizer=CLIPTokenizer.from_pretrained(config, subfolder="tokenizer"),
                        tokenizer_2=T5TokenizerFast.from_pretrained(config, subfolder="tokenizer_2"), **loaded)


def _example(part: str) -> str:
    return {"transformer": "flux1-dev.safetensors", "text_encoder": "clip_l.safetensors",
            "text_encoder_2": "t5xxl_fp16.safetensors", "vae": "ae.safetensors"}[part]


def _config_folder(model_cfg, for_file: Path) -> Path:
    if not model_cfg.single_file_config.strip():
        if for_file.is_dir():
            return for_file
        raise UserError(f"model.single_file_config is empty: loading FLUX from {for_file.name} needs a local folder "
                        f"with FLUX's diffusers configs and tokenizers (Easel never downloads them while training).",
                        "Set model.single_file_config to a FluxPipeline folder: model_index.json plus transformer/, "
                        "text_encoder/, text_encoder_2/, vae/, scheduler/ with their config files and tokenizer/, "
                        "tokenizer_2/ (the weights are not needed).")
    config = Path(model_cfg.single_file_config).expanduser()
    missing = missing_config_parts(config) if config.is_dir() else ["the folder itself"]
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if config.is_dir() and not (config / tokenizer).is_dir():
            missing.append(f"{tokenizer}/")
    if missing:
        raise UserError(f"model.single_file_config: {config} is missing {', '.join(missing)}.",
                        "Use a FluxPipeline folder (the FLUX.1-dev or -schnell repository without its weights is "
                        "enough: configs and tokenizers, a few MB).")
    return config


def _checked_file(part: str, file: str) -> Path:
    key, kind = FILE_KEYS[part]
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"{key}: no such file: {path}", f"Set {key} to your {_example(part)} (copy its path from "
                                                        f"the file explorer).")
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{key}: {path.name} is not a .safetensors file.",
                        f"Use the .safetensors version of the {KINDS[kind]} file.")
    try:
        found = file_kind(path)
    except Exception as e:  # noqa: BLE001 - a cut-off or foreign file
        raise UserError(f"{key}: {path} cannot be read as a .safetensors file (damaged or incompletely downloaded).",
                        f"Download {path.name} again.") from e
    accepted = {kind, "flux_transformer_diffusers"} if part == "transformer" else {kind}
    if found not in accepted:
        what = KINDS.get(found, "not a file Easel knows")
        raise UserError(f"{key}: {path.name} is {what}, not {KINDS[kind]}.",
                        f"Set {key} to your {_example(part)}"
                        + (f"; {path.name} belongs in {_key_for(found)}." if _key_for(found) else "."))
    return path


def _key_for(kind: str | None) -> str | None:
    return next((key for key, k in FILE_KEYS.values() if k == kind), None)


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


def _load_from_folder(part: str, config: Path, dtype):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    cls = {"transformer": FluxTransformer2DModel, "text_encoder": CLIPTextModel, "text_encoder_2": T5EncoderModel,
           "vae": AutoencoderKL}[part]
    return cls.from_pretrained(config, subfolder=part, dtype=dtype, local_files_only=True)


def _load_part(part: str, file: Path, config: Path, dtype, quantization=None, fp8: bool = False):
    from safetensors.torch import load_file

    if part == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_single_file(str(file), config=str(config), subfolder="vae", dtype=dtype,
                                              local_files_only=True)
    if part == "transformer" and quantization is not None:  # diffusers' converter (full-size FLUX only)
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel.from_single_file(str(file), config=str(config), subfolder="transformer",
                                                       quantization_config=quantization, dtype=dtype,
                                                       local_files_only=True)
    if part == "transformer":
        return _transformer_from_state(_read_transformer(file, dtype, fp8), config, dtype, file)
    return _text_encoder_from_state(part, load_file(str(file)), config, dtype, file)


def _read_transformer(file: Path, dtype, fp8: bool) -> dict:
    """The file's tensors one at a time, each straight into the dtype it will be kept in: with fp8 storage the
    blocks' linear weights go to float8 as they are read, so RAM holds ~12 GB for FLUX-dev instead of a 24 GB
    bf16 copy first (layerwise casting then leaves them as they are)."""
    import torch
    from safetensors import safe_open

    state = {}
    with safe_open(str(file), "pt") as f:
        for key in f.keys():
            stored_in_fp8 = fp8 and _BLOCK_LINEAR.match(key.removeprefix("model.diffusion_model.")) is not None
            state[key] = f.get_tensor(key).to(torch.float8_e4m3fn if stored_in_fp8 else dtype)
    return state


# BFL block tensors that layerwise casting keeps in fp8: every Linear's weight and bias (not the RMSNorm scales)
_BLOCK_LINEAR = re.compile(r"^(double_blocks|single_blocks)\.\d+\.(?!.*norm\.)[\w.]+\.(weight|bias)$")


def _transformer_from_state(state: dict, config: Path, dtype, file: Path):
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    if any(k.startswith(("double_blocks.", "model.diffusion_model.")) for k in state):
        state = bfl_to_diffusers(state)
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(config, subfolder="transformer"))
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise UserError(f"model.path: {file.name} does not fit the FLUX config in {config / 'transformer'} "
                        f"({len(missing)} tensors missing, {len(unexpected)} unexpected; first: "
                        f"{', '.join(sorted(missing | unexpected)[:3])}).",
                        "Use the config folder of the same model (FLUX.1-dev for flux1-dev files, FLUX.1-schnell "
                        "for flux1-schnell files).")
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _text_encoder_from_state(part: str, state: dict, config: Path, dtype, file: Path):
    from transformers import AutoConfig, CLIPTextModel, T5EncoderModel

    cls = CLIPTextModel if part == "text_encoder" else T5EncoderModel
    if part == "text_encoder_2" and "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    model, info = cls.from_pretrained(None, config=AutoConfig.from_pretrained(config / part), state_dict=state,
                                      dtype=dtype, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        key = FILE_KEYS[part][0]
        raise UserError(f"{key}: {file.name} does not fit the {part} config in {config / part} "
                        f"({len(missing)} tensors missing, first: {', '.join(sorted(missing)[:3])}).",
                        f"Use the {_example(part)} of the same model as the config folder.")
    return model
