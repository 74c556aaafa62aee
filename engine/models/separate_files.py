"""Loading a model from the files a ComfyUI user already has, for the families that take them (FLUX.1, Chroma,
Z-Image): a transformer file (model.path), separate text-encoder files, an ae.safetensors, and
model.single_file_config, a diffusers pipeline folder with the configs and tokenizers (no weights needed; a full
diffusers copy works too, and then its weights fill any file left empty).

Each such family describes its file set once, as a SeparateFiles in its loading.py (its keys, the kinds of file
they take, the example names, the words of its messages); what is the same for all of them is here:

    config = config_folder(FILES, model_cfg, transformer_file)        # or a UserError naming what is missing
    files = files_to_read(FILES, model_cfg, config, transformer_file) # each file checked by its tensor names
    loaded = read_parts(FILES, files, config, progress, read_file, read_folder, store)

Every file is checked by its tensor names before it is read (checked_file), so a text encoder given as the
transformer, or any other mix-up, says which key holds which kind of file. The transformer is read first and stored
at once (fp8 right after reading, int8 / nf4 while reading), before the text encoders are read, so CPU RAM never
holds a bf16 transformer beside a bf16 text encoder. What each family keeps: its key maps, its model classes, its
text-encoder quirks (family folders' loading.py).

Torch-free at import: torch, diffusers, transformers and safetensors are imported inside the functions that read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.failures import UserError
from engine.models.loading import missing_config_parts


@dataclass(frozen=True)
class SeparateFiles:
    """One family's file set, with the words its messages use."""
    label: str                               # the model in messages: f"loading {label} from single files"
    pipeline: str                            # the diffusers pipeline class whose folder model.single_file_config is
    repository: str                          # a repository whose configs and tokenizers are enough (messages)
    file_keys: dict[str, tuple[str, str]]    # pipeline part -> (preset key, kind of file), the transformer first
    kinds: dict[str, str]                    # kind of file -> what it is, with its article: "a T5-XXL text encoder"
    file_kind: Callable[[Path], str | None]  # which of kinds a .safetensors file is, from its tensor names
    diffusers_layout: str                    # the kind of a transformer file in diffusers' layout (model.path takes it)
    examples: dict[str, str]                 # part -> the file a ComfyUI user has: "ae.safetensors"
    comfy_folders: dict[str, str]            # part -> its folder under ComfyUI's models/
    tokenizers: tuple[str, ...]              # the tokenizer folders model.single_file_config holds
    transformer_hint: str                    # the advice when model.path's file does not fit the config's transformer
    elsewhere: dict[str, str] = field(default_factory=dict)  # kind with no key here -> where it goes instead
    comfy_note: str = ""                     # said after where ComfyUI keeps a missing text encoder / VAE file

    @property
    def parts(self) -> tuple[str, ...]:
        """The pipeline parts read from files, in reading order (the transformer first)."""
        return tuple(self.file_keys)


def given_file(spec: SeparateFiles, model_cfg, part: str) -> str:
    """The file the user set for `part` ("" when none)."""
    return getattr(model_cfg, spec.file_keys[part][0].split(".")[1]).strip()


def checked_file(spec: SeparateFiles, part: str, file: str, key: str = "") -> Path:
    """`file` as a path, once its tensor names say it is the kind of file `part` takes; else a UserError naming the
    key (the part's own, or `key`) and, when the file is another kind, the key it belongs in."""
    key, kind = key or spec.file_keys[part][0], spec.file_keys[part][1]
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"{key}: no such file: {path}", f"Set {key} to your {spec.examples[part]} (copy its path from "
                                                        f"the file explorer).")
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{key}: {path.name} is not a .safetensors file.",
                        f"Use the .safetensors version of {spec.kinds[kind]} file.")
    try:
        found = spec.file_kind(path)
    except Exception as e:  # noqa: BLE001 - a cut-off or foreign file
        raise UserError(f"{key}: {path} cannot be read as a .safetensors file (damaged or incompletely downloaded).",
                        f"Download {path.name} again.") from e
    accepted = {kind, spec.diffusers_layout} if part == "transformer" else {kind}
    if found not in accepted:
        belongs = next((k for k, expected in spec.file_keys.values() if expected == found), None)
        where = (f"; {path.name} belongs in {belongs}" if belongs else
                 f"; {spec.elsewhere[found]}" if found in spec.elsewhere else "")
        raise UserError(f"{key}: {path.name} is {spec.kinds.get(found, 'not a file Easel knows')}, not "
                        f"{spec.kinds[kind]}.", f"Set {key} to your {spec.examples[part]}{where}.")
    return path


def config_folder(spec: SeparateFiles, model_cfg, for_file: Path) -> Path:
    """model.single_file_config, checked (its model_index.json, each part's config, the tokenizers); `for_file`
    itself when that is unset and `for_file` is a folder."""
    tokenizers = "tokenizers" if len(spec.tokenizers) > 1 else "tokenizer"
    if not model_cfg.single_file_config.strip():
        if for_file.is_dir():
            return for_file
        raise UserError(f"model.single_file_config is empty: loading {spec.label} from {for_file.name} needs a local "
                        f"folder with {spec.label}'s diffusers configs and {tokenizers} (Easel never downloads them "
                        f"while training).",
                        f"Set model.single_file_config to a {spec.pipeline} folder: model_index.json plus "
                        f"{', '.join(f'{p}/' for p in spec.parts)}, scheduler/ with their config files and "
                        f"{', '.join(f'{t}/' for t in spec.tokenizers)} (the weights are not needed).")
    config = Path(model_cfg.single_file_config).expanduser()
    missing = missing_config_parts(config) if config.is_dir() else ["the folder itself"]
    missing += [f"{t}/" for t in spec.tokenizers if config.is_dir() and not (config / t).is_dir()]
    if missing:
        raise UserError(f"model.single_file_config: {config} is missing {', '.join(missing)}.",
                        f"Use a {spec.pipeline} folder (the {spec.repository} repository without its weights is "
                        f"enough: configs and {tokenizers}, a few MB).")
    return config


def has_weights(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


def files_to_read(spec: SeparateFiles, model_cfg, config: Path, transformer_file: Path) -> dict[str, Path]:
    """part -> its checked file: the transformer's, and each other part's that is set; a part left empty is read
    from the config folder, which must have its weights then."""
    files = {"transformer": checked_file(spec, "transformer", str(transformer_file))}
    for part in spec.parts[1:]:
        key, kind = spec.file_keys[part]
        if given_file(spec, model_cfg, part):
            files[part] = checked_file(spec, part, given_file(spec, model_cfg, part))
        elif not has_weights(config / part):
            raise UserError(f"{key} is empty, and model.single_file_config ({config}) has no {part} weights either: "
                            f"loading {spec.label} from single files needs {spec.kinds[kind]} file.",
                            f"Set {key} to your {spec.examples[part]} (in ComfyUI it is in models/"
                            f"{spec.comfy_folders[part]}/{spec.comfy_note}).")
    return files


def read_parts(spec: SeparateFiles, files: dict[str, Path], config: Path, progress, read_file, read_folder,
               store) -> dict:
    """part -> its model, in the spec's order: read_file(part, path) for the parts in `files`, read_folder(part) for
    the others; store(transformer) right after the transformer is read, before any text encoder is.
    progress(text, n, total) per part."""
    loaded = {}
    for n, part in enumerate(spec.parts):
        progress(f"Loading {part} from {files[part].name if part in files else config / part}", n, len(spec.parts))
        loaded[part] = read_file(part, files[part]) if part in files else read_folder(part)
        if part == "transformer":
            loaded[part] = store(loaded[part])
    progress(f"{spec.label} loaded", len(spec.parts), len(spec.parts))
    return loaded


def store_transformer(transformer, quantize_base: str, dtype, progress, block_lists):
    """fp8 storage as soon as the transformer is read (int8 / nf4 happened while reading; a transformer already
    stored in fp8 stays as it is). block_lists: the family's Capabilities.block_lists."""
    from engine.models.base_storage import store_in_fp8

    if quantize_base == "fp8" and not getattr(transformer, "easel_fp8", False):
        store_in_fp8(transformer, dtype, lambda n, total: progress("Storing the transformer in fp8, block by block",
                                                                   n, total), block_lists)
        transformer.easel_fp8 = True  # setup's store_base sees it is done
    if quantize_base == "fp8":
        size = sum(p.numel() * p.element_size() for p in transformer.parameters())
        progress(f"Transformer in fp8: {size / 2**30:.2f} GB", 1, 1)
    return transformer


# ---------------------------------------------------------------------------------------------- readers

def from_folder_or_hub(cls, part: str, source: str, dtype, quantization=None):
    """`part` of a diffusers folder or Hub id as `cls` (offline for a folder, or when HF_HUB_OFFLINE is set)."""
    import os

    local = Path(source).expanduser()
    offline = local.is_dir() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    extra = {"quantization_config": quantization} if quantization is not None else {}
    return cls.from_pretrained(local if local.is_dir() else source, subfolder=part, dtype=dtype,
                               local_files_only=offline, **extra)


def from_config_folder(cls, part: str, config: Path, dtype):
    """A part left empty: its weights from the config folder."""
    return cls.from_pretrained(config, subfolder=part, dtype=dtype, local_files_only=True)


def vae_from_file(file: Path, config: Path, dtype):
    """ae.safetensors (FLUX.1's autoencoder, in the original layout), read by diffusers' single-file loader."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_single_file(str(file), config=str(config), subfolder="vae", dtype=dtype,
                                          local_files_only=True)


def transformer_from_single_file(cls, file: Path, config: Path, dtype, quantization):
    """A transformer file quantized while it is read (int8 / nf4): diffusers' converter reads the original layout."""
    return cls.from_single_file(str(file), config=str(config), subfolder="transformer",
                                quantization_config=quantization, dtype=dtype, local_files_only=True)


def read_transformer(file: Path, dtype, fp8: bool, block_linear: re.Pattern, prefixes: tuple[str, ...],
                     block_of: re.Pattern | None = None, progress=None) -> dict:
    """The file's tensors one at a time, each straight into the dtype it will be kept in: with fp8 storage the
    tensors block_linear matches (the blocks' linears, named without one of `prefixes`) go to float8 as they are
    read, so RAM never holds a bf16 copy first (layerwise casting then leaves them as they are).
    progress(text, n, total) per block that block_of matches, when both are given."""
    import torch
    from safetensors import safe_open

    def local(key: str) -> str:
        return next((key[len(p):] for p in prefixes if key.startswith(p)), key)

    state = {}
    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())
        blocks = sorted({m[0] for k in keys if (m := block_of.match(local(k)))}) if block_of else []
        done: set = set()
        for key in keys:
            stored_in_fp8 = fp8 and block_linear.match(local(key)) is not None
            state[key] = f.get_tensor(key).to(torch.float8_e4m3fn if stored_in_fp8 else dtype)
            block = block_of.match(local(key)) if block_of else None
            if progress and block and block[0] not in done:
                done.add(block[0])
                progress(f"Reading {file.name}, block by block", len(done), len(blocks))
    return state


def transformer_from_state(spec: SeparateFiles, cls, state: dict, config: Path, file: Path):
    """`cls` built empty from the config folder's transformer config and given `state` (diffusers names), which
    must fit it exactly: else a UserError with the spec's transformer_hint."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls.from_config(cls.load_config(config, subfolder="transformer"))
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise UserError(f"model.path: {file.name} does not fit the {spec.label} config in {config / 'transformer'} "
                        f"({len(missing)} tensors missing, {len(unexpected)} unexpected; first: "
                        f"{', '.join(sorted(missing | unexpected)[:3])}).", spec.transformer_hint)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def text_encoder_from_state(cls, te_config, state: dict, dtype, key: str, file: Path, folder: Path, hint: str):
    """A transformers text encoder `cls` with config `te_config` (read from `folder`) from a file's `state`; a
    UserError naming `key` when tensors are missing (position_ids are buffers transformers makes itself)."""
    model, info = cls.from_pretrained(None, config=te_config, state_dict=state, dtype=dtype,
                                      output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise UserError(f"{key}: {file.name} does not fit the {folder.name} config in {folder} "
                        f"({len(missing)} tensors missing, first: {', '.join(sorted(missing)[:3])}).", hint)
    return model


def with_t5_shared(state: dict) -> dict:
    """ComfyUI's t5xxl files keep only encoder.embed_tokens.weight; T5EncoderModel also reads it as shared.weight."""
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    return state


# ---------------------------------------------------------------------------------------------- the tests' files

def ae_tensors(diffusers_dir: Path) -> dict:
    """The folder's VAE in the original (LDM) layout, as ae.safetensors holds it."""
    import json

    from engine.models.families.sd.ldm_convert import load_component, vae_state_to_ldm

    vae_config = json.loads((Path(diffusers_dir) / "vae" / "config.json").read_text(encoding="utf-8"))
    return vae_state_to_ldm(load_component(Path(diffusers_dir) / "vae"), len(vae_config["up_block_types"]))


def write_component_files(diffusers_dir: Path, out_dir: Path, parts: dict[str, tuple[str, dict]],
                          transformer_dtype=None) -> dict[str, Path]:
    """Write a pipeline folder as the files a ComfyUI user has, for the tests of single-file loading: each of
    `parts` {name: (file name, tensors)} as out_dir/<file name> (parts["transformer"] stored in `transformer_dtype`
    when given, e.g. torch.float8_e4m3fn for an fp8 file), and out_dir/config, the folder's configs and tokenizers
    without weights. Returns {name -> path, "config" -> path}."""
    import shutil

    from safetensors.torch import save_file

    diffusers_dir, out_dir = Path(diffusers_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, (name, tensors) in parts.items():
        if key == "transformer" and transformer_dtype is not None:
            tensors = {k: v.to(transformer_dtype) for k, v in tensors.items()}
        paths[key] = out_dir / name
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(paths[key]))
    config = out_dir / "config"
    shutil.copytree(diffusers_dir, config, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"),
                    dirs_exist_ok=True)
    paths["config"] = config
    return paths
