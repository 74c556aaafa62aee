"""Load a FLUX.2 klein pipeline from a diffusers folder or Hub id, or from the files a ComfyUI user already has:

    model.path               flux-2-klein-base-4b.safetensors ... (ComfyUI's diffusion_models/; BFL's layout, bf16
                             or fp8, or a diffusers transformer file)
    model.text_encoder_path  qwen_3_4b.safetensors (4B) / qwen_3_8b (9B) (ComfyUI's text_encoders/)
    model.vae_path           flux2-vae.safetensors (the 32-channel FLUX.2 AE)
    model.single_file_config a Flux2KleinPipeline folder with the configs and tokenizer (no weights needed)

Every file is checked by its tensor names before it is read (engine/models/separate_files.py, shared with FLUX.1,
Chroma and Z-Image). BFL's names go through diffusers' own converter; model.quantize_base fp8 stores the block
linears in float8 as they are read, before Qwen3 is.
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.models import separate_files as sf
from engine.models.base_storage import bnb_config
from engine.models.families.flux2.caps import CAPABILITIES
from engine.models.families.flux2.names import KINDS, PREFIXES, ae_to_diffusers, file_kind, strip_prefix
from engine.models.loading import HUB_ID, load_pipeline

FILES = sf.SeparateFiles(
    label="FLUX.2 klein", pipeline="Flux2KleinPipeline", repository="black-forest-labs/FLUX.2-klein-base-4B",
    file_keys={"transformer": ("model.path", "flux2_transformer"),
               "text_encoder": ("model.text_encoder_path", "qwen3"), "vae": ("model.vae_path", "flux2_ae")},
    kinds=KINDS, file_kind=file_kind, diffusers_layout="flux2_transformer_diffusers",
    examples={"transformer": "flux-2-klein-base-4b.safetensors", "text_encoder": "qwen_3_4b.safetensors",
              "vae": "flux2-vae.safetensors"},
    comfy_folders={"transformer": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"},
    tokenizers=("tokenizer",),
    transformer_hint="Use the config folder of the same klein (FLUX.2-klein-base-4B for a 4B file, -9B for a 9B "
                     "one).",
)
# block tensors that layerwise casting keeps in fp8 (BFL's names): every Linear's weight and bias, not the norms
_BLOCK_LINEAR = re.compile(r"^(double_blocks|single_blocks)\.\d+\.(?!.*norm)[\w.]+\.(weight|bias)$")
_BLOCK_OF = re.compile(r"^(double_blocks|single_blocks)\.\d+\.")


def load_flux2_pipeline(model_cfg, dtype, progress):
    """A Flux2KleinPipeline with weights in `dtype` on the CPU; progress(text, n, total) per component."""
    from diffusers import Flux2KleinPipeline

    source = model_cfg.path.strip()
    path = Path(source).expanduser() if source else None
    quantization = bnb_config(model_cfg.quantize_base, dtype)
    if path is not None and path.is_file():
        return _from_files(model_cfg, path, dtype, quantization, progress)
    if path is None or (path.is_dir() and not (path / "model_index.json").is_file()) or \
            (not path.exists() and not HUB_ID.match(source)):
        load_pipeline(Flux2KleinPipeline, model_cfg, dtype)  # says what is wrong with an empty, foreign or missing path
    # parts given as files beside a folder or Hub id need a local config folder: checked before minutes of loading
    given = {part: file for part in ("text_encoder", "vae") if (file := sf.given_file(FILES, model_cfg, part))}
    config = sf.config_folder(FILES, model_cfg, path) if given else None
    # the transformer first (stored in fp8 at once), then Qwen3: the big two never both in bf16 in RAM
    progress("Loading the transformer", 0, 3)
    transformer = load_transformer(source, model_cfg, dtype, progress)
    progress("Loading Qwen3 and the autoencoder", 1, 3)
    pipe = load_pipeline(Flux2KleinPipeline, model_cfg, dtype, transformer=transformer)
    for part, file in given.items():
        setattr(pipe, part, _load_part(part, sf.checked_file(FILES, part, file), config, dtype))
    progress("FLUX.2 klein loaded", 3, 3)
    return pipe


def store(transformer, model_cfg, dtype, progress):
    """fp8 storage as soon as the transformer is read (int8 / nf4 happened while reading)."""
    return sf.store_transformer(transformer, model_cfg.quantize_base, dtype, progress,
                                CAPABILITIES["flux2"].block_lists)


def load_transformer(source: str, model_cfg, dtype, progress, key: str = "model.path"):
    """A klein transformer alone from a file (its config from model.single_file_config or the model.path folder) or
    a folder / Hub id, stored as model.quantize_base says: the base's, and the distilled klein of
    model.preview_path (flux2/preview.py)."""
    from diffusers import Flux2Transformer2DModel

    path = Path(source).expanduser()
    quantization = bnb_config(model_cfg.quantize_base, dtype)
    if path.is_file():
        base = Path(model_cfg.path.strip()).expanduser()
        config = sf.config_folder(FILES, model_cfg, base if base.is_dir() else path)
        transformer = _load_part("transformer", sf.checked_file(FILES, "transformer", source, key), config, dtype,
                                 quantization, fp8=model_cfg.quantize_base == "fp8", progress=progress)
    else:
        transformer = sf.from_folder_or_hub(Flux2Transformer2DModel, "transformer", source, dtype, quantization)
    return store(transformer, model_cfg, dtype, progress)


def _from_files(model_cfg, transformer_file: Path, dtype, quantization, progress):
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
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
    # the folder's own pipeline config says whether this klein is the distilled one (it samples without guidance)
    distilled = Flux2KleinPipeline.load_config(config).get("is_distilled", False)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(config, subfolder="scheduler"),
                              tokenizer=AutoTokenizer.from_pretrained(config, subfolder="tokenizer"),
                              is_distilled=distilled, **loaded)


def _classes() -> dict:
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3ForCausalLM

    return {"transformer": Flux2Transformer2DModel, "text_encoder": Qwen3ForCausalLM, "vae": AutoencoderKLFlux2}


def _load_part(part: str, file: Path, config: Path, dtype, quantization=None, fp8: bool = False, progress=None):
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    if part == "vae":
        return _vae_from_file(file, config, dtype)
    if part == "transformer" and quantization is not None:  # diffusers' converter reads BFL's layout
        return sf.transformer_from_single_file(_classes()[part], file, config, dtype, quantization)
    if part == "transformer":
        state = sf.read_transformer(file, dtype, fp8, _BLOCK_LINEAR, PREFIXES, _BLOCK_OF, progress)
        if any(strip_prefix(k).startswith(("double_blocks.", "single_blocks.")) for k in state):
            state = convert_flux2_transformer_checkpoint_to_diffusers({strip_prefix(k): v for k, v in state.items()})
        return sf.transformer_from_state(FILES, _classes()[part], state, config, file)
    return _text_encoder_from_file(file, config, dtype)


def _vae_from_file(file: Path, config: Path, dtype):
    """flux2-vae.safetensors: diffusers reads no single file for AutoencoderKLFlux2, so names.ae_to_diffusers does;
    the attention weights of the original layout are 1x1 convs, diffusers' are linears (same numbers)."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    cls = _classes()["vae"]
    vae_config = cls.load_config(config, subfolder="vae")
    with init_empty_weights():
        vae = cls.from_config(vae_config)
    expected = vae.state_dict()
    state = ae_to_diffusers(load_file(str(file)), dict(vae_config))
    state = {k: v.reshape(expected[k].shape).to(dtype) if k in expected else v for k, v in state.items()}
    state = {k: v.to(expected[k].dtype) if k.endswith("num_batches_tracked") else v for k, v in state.items()}
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        from engine.failures import UserError

        raise UserError(f"model.vae_path: {file.name} does not fit the FLUX.2 AE config in {config / 'vae'} "
                        f"({len(missing)} tensors missing, {len(unexpected)} unexpected; first: "
                        f"{', '.join(sorted(missing | unexpected)[:3])}).",
                        "Use flux2-vae.safetensors, the FLUX.2 autoencoder (FLUX.1's ae.safetensors has 16 channels "
                        "and does not fit).")
    vae.load_state_dict(state, strict=True, assign=True)
    return vae


def _text_encoder_from_file(file: Path, config: Path, dtype):
    """ComfyUI's qwen_3_*b.safetensors names the layers as Qwen3ForCausalLM does (`model.layers...`); its lm_head is
    tied to the embedding, so a file without one is whole."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    state = load_file(str(file))
    if not any(k.startswith("model.") for k in state):  # a bare Qwen3Model file
        state = {f"model.{k}": v for k, v in state.items()}
    return sf.text_encoder_from_state(_classes()["text_encoder"], AutoConfig.from_pretrained(config / "text_encoder"),
                                      state, dtype, "model.text_encoder_path", file, config / "text_encoder",
                                      "Use the Qwen3 file of the same klein (qwen_3_4b for the 4B, qwen_3_8b for "
                                      "the 9B), with that klein's config folder.")
