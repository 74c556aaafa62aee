"""LoRA adapters (peft), export to the formats UIs load, and loading a LoRA back (the load self-check that
runs on every exported file is engine/lora_check.py).

Formats (EXPORT_FORMATS; keys equal the preset's `export.format` values):
  kohya      A1111 / Forge / ComfyUI for SD1.x, SD2, SDXL: `lora_unet_<module>` / `lora_te_…` (one text encoder) or
             `lora_te1_…`/`lora_te2_…` (two), `.lora_down.weight`, `.lora_up.weight`, `.alpha`, plus sd-scripts
             `ss_*` and `modelspec.*` metadata (A1111 shows these in its LoRA card).
  diffusers  peft keys under the pipeline's component names (`unet.`/`transformer.`/`text_encoder.`), with the peft
             config in the `lora_adapter_metadata` header, exactly what `<Pipeline>.save_lora_weights` writes.
             FLUX LoRAs use this format; ComfyUI loads it.

Four traps (notes/platform-facts.md §3), each handled here and tested in tests/test_lora_export.py:
  1. alpha: diffusers' convert_state_dict_to_kohya writes alpha = rank; we write the real per-module alpha.
  2. prefixes: kohya names need the component prefix (`lora_unet_`), which that converter only adds to keys
     containing "unet"; we name keys ourselves from the module paths.
  3. `text_model.`: transformers >= 5.6 flattens CLIPTextModel (`encoder.layers…`), but A1111/ComfyUI expect
     `lora_te_text_model_encoder_layers_…`; we re-add it.
  4. adapter metadata: without `lora_adapter_metadata`, diffusers reloads with alpha = rank (wrong strength).
"""
from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.atomic import atomic_write

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # the header key diffusers reads the peft config from


class LoraLoadError(RuntimeError):
    """A LoRA file that does not load fully into its pipeline (names the keys that did not match)."""


@dataclass(frozen=True)
class LoraExportInfo:
    """What the file's metadata says about the training run (everything is written as a string)."""

    title: str                                  # modelspec.title and ss_output_name
    base_model_version: str                     # ss_base_model_version: sd_v1, sd_v2_768_v, sdxl_base_v1-0, flux1
    architecture: str                           # modelspec.architecture, e.g. stable-diffusion-xl-v1-base/lora
    prediction_type: str = "epsilon"            # modelspec.prediction_type: epsilon | v | flow
    implementation: str = "https://github.com/huggingface/diffusers"  # modelspec.implementation
    resolution_px: tuple[int, int] = (512, 512)  # training (width, height)
    text_encoder_names: tuple[str, ...] = ("text_encoder",)  # ALL the base model's text encoders, in order
    steps: int = 0                              # optimizer steps done (ss_steps)
    epoch: int = 0
    tag_frequency: dict = field(default_factory=dict)  # {dataset_folder: {tag: count}} (ss_tag_frequency)
    training_comment: str = ""
    base_model_name: str = ""                   # ss_sd_model_name: the checkpoint file/folder trained on
    trigger_phrase: str = ""                    # modelspec.trigger_phrase
    extra: dict = field(default_factory=dict)   # more ss_* keys the trainer knows (learning rates, seed, optimizer…)


# ---------------------------------------------------------------------------------------------- adapters

def add_lora(module: torch.nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str],
             init: str = "gaussian", adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """Add a LoRA adapter to a diffusers model or a transformers text encoder; returns its trainable parameters.

    Both libraries expose `add_adapter(LoraConfig)` (peft integration). lora_B starts at zero either way, so the
    adapter changes nothing until trained. init: "gaussian" (lora_A ~ N(0, 1/rank)) or "default" (Kaiming-uniform).
    """
    from peft import LoraConfig

    inits = {"gaussian": "gaussian", "default": True}
    if init not in inits:
        raise ValueError(f"lora.init: {init!r} is not one of {', '.join(inits)}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        init_lora_weights=inits[init])
    module.add_adapter(config, adapter_name=adapter_name)
    params = [p for name, p in module.named_parameters() if ".lora_" in name and f".{adapter_name}." in name]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_layers(module: torch.nn.Module, adapter_name: str = "default") -> dict:
    """{module path: peft LoraLayer} for every layer that carries `adapter_name`."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules()
            if isinstance(m, LoraLayer) and adapter_name in m.lora_A}


# ---------------------------------------------------------------------------------------------- export

def save_lora(path: Path, fmt: str, denoiser: torch.nn.Module, text_encoders: dict[str, torch.nn.Module],
              metadata_info: LoraExportInfo, adapter_name: str = "default", dtype=torch.float16) -> Path:
    """Write the adapters of `denoiser` and of `text_encoders` ({pipeline component name: module}) to `path`.

    Only modules that carry `adapter_name` are written, so a frozen text encoder can be passed or left out.
    """
    from engine.registry import choose

    to_tensors = choose(EXPORT_FORMATS, fmt, "export.format")
    components = {_denoiser_component(denoiser): denoiser, **text_encoders}
    components = {name: m for name, m in components.items() if lora_layers(m, adapter_name)}
    if not components:
        raise ValueError(f"no LoRA adapter {adapter_name!r} in the denoiser or text encoders: nothing to save")
    tensors, header = to_tensors(components, metadata_info, adapter_name)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
    rank, alpha = _rank_and_alpha(components, adapter_name)
    metadata = {**_training_metadata(metadata_info, rank, alpha), **header}
    atomic_save_file(tensors, Path(path), metadata)
    return Path(path)


def _kohya_tensors(components: dict, info: LoraExportInfo, adapter_name: str) -> tuple[dict, dict]:
    prefixes = _kohya_prefixes(info.text_encoder_names)
    tensors = {}
    for component, module in components.items():
        if component not in prefixes:
            raise ValueError(
                f"export.format: 'kohya' has no layout for {type(module).__name__} ({component}); "
                "use format 'diffusers', which diffusers and ComfyUI load (kohya FLUX LoRAs use BFL names)")
        for path, layer in lora_layers(module, adapter_name).items():
            if component.startswith("text_encoder") and _is_flattened_clip(module):
                path = "text_model." + path  # trap 3: A1111/ComfyUI name CLIP layers with text_model.
            name = prefixes[component] + "_" + path.replace(".", "_")
            tensors[f"{name}.lora_down.weight"] = layer.lora_A[adapter_name].weight
            tensors[f"{name}.lora_up.weight"] = layer.lora_B[adapter_name].weight
            # trap 1: kohya's scale is alpha / rank, so alpha = peft's scaling * rank (also right for rsLoRA).
            tensors[f"{name}.alpha"] = torch.tensor(layer.scaling[adapter_name] * layer.r[adapter_name])
    return tensors, {"ss_network_module": "networks.lora"}


def _diffusers_tensors(components: dict, info: LoraExportInfo, adapter_name: str) -> tuple[dict, dict]:
    from peft import get_peft_model_state_dict

    tensors, adapter_metadata = {}, {}
    for component, module in components.items():
        state = get_peft_model_state_dict(module, adapter_name=adapter_name)
        tensors.update({f"{component}.{k}": v for k, v in state.items()})
        # trap 4: the peft config (lora_alpha above all) travels in the header, as save_lora_weights writes it.
        config = module.peft_config[adapter_name].to_dict()
        adapter_metadata.update({f"{component}.{k}": v for k, v in config.items()})
    header = {"format": "pt",
              LORA_ADAPTER_METADATA_KEY: json.dumps(adapter_metadata, indent=2, sort_keys=True, default=_jsonable)}
    return tensors, header


EXPORT_FORMATS = {"kohya": _kohya_tensors, "diffusers": _diffusers_tensors}


def _denoiser_component(denoiser) -> str:
    """diffusers names the denoiser `unet` in UNet pipelines and `transformer` in DiT pipelines (FLUX, SD3)."""
    return "unet" if "UNet" in type(denoiser).__name__ else "transformer"


def _kohya_prefixes(text_encoder_names: tuple[str, ...]) -> dict[str, str]:
    """sd-scripts: `lora_te_` when the model has one text encoder, `lora_te1_`, `lora_te2_` when it has two."""
    if len(text_encoder_names) == 1:
        return {"unet": "lora_unet", text_encoder_names[0]: "lora_te"}
    return {"unet": "lora_unet", **{name: f"lora_te{i + 1}" for i, name in enumerate(text_encoder_names)}}


def _is_flattened_clip(module) -> bool:
    return "CLIP" in type(module).__name__ and not hasattr(module, "text_model")


def _rank_and_alpha(components: dict, adapter_name: str) -> tuple[int, float]:
    """The denoiser's (first component's) rank and alpha: what sd-scripts records as network dim / alpha."""
    layer = next(iter(lora_layers(next(iter(components.values())), adapter_name).values()))
    return layer.r[adapter_name], layer.lora_alpha[adapter_name]


def _training_metadata(info: LoraExportInfo, rank: int, alpha: float) -> dict[str, str]:
    """sd-scripts `ss_*` keys (A1111 reads these) and Stability's `modelspec.*` keys; safetensors wants str values."""
    width, height = info.resolution_px
    now = datetime.datetime.now(datetime.timezone.utc)
    metadata = {
        "ss_output_name": info.title,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": _number(alpha),
        "ss_base_model_version": info.base_model_version,
        "ss_v2": str(info.base_model_version.startswith("sd_v2")),
        "ss_resolution": f"({width}, {height})",
        "ss_tag_frequency": json.dumps(info.tag_frequency, ensure_ascii=False),
        "ss_training_comment": info.training_comment,
        "ss_steps": str(info.steps),
        "ss_epoch": str(info.epoch),
        "ss_sd_model_name": info.base_model_name,
        "ss_training_finished_at": str(now.timestamp()),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": info.architecture,
        "modelspec.implementation": info.implementation,
        "modelspec.title": info.title,
        "modelspec.date": now.date().isoformat(),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": info.prediction_type,
        "modelspec.trigger_phrase": info.trigger_phrase,
    }
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in info.extra.items()})
    return metadata


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(float(x))


def _jsonable(value):
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """safetensors save that never leaves a half-written file: write `name.tmp`, fsync, then os.replace.

    A crash or a full disk mid-save leaves the previous good file in place (and at worst a stray .tmp).
    """
    from safetensors.torch import save_file

    bad = [k for k, v in (metadata or {}).items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be str; not: {', '.join(bad)}")
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


# ---------------------------------------------------------------------------------------------- load back

@dataclass(frozen=True)
class LoraFileInfo:
    format: str           # kohya | diffusers
    rank: int             # of the first module (what a new adapter must be created with)
    alpha: float
    metadata: dict


def lora_file_info(path: Path) -> LoraFileInfo:
    """Format, rank and alpha of a LoRA file, so an adapter of the same shape can be created before loading."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        keys = list(f.keys())
        down = next((k for k in keys if k.endswith((".lora_down.weight", ".lora_A.weight"))), None)
        if down is None:
            raise LoraLoadError(f"{path}: no LoRA weights (no *.lora_down.weight or *.lora_A.weight keys)")
        rank = f.get_slice(down).get_shape()[0]
        if down.endswith(".lora_down.weight"):
            alpha_key = down.removesuffix(".lora_down.weight") + ".alpha"
            alpha = float(f.get_tensor(alpha_key)) if alpha_key in keys else float(rank)
            return LoraFileInfo("kohya", rank, alpha, metadata)
    adapter = json.loads(metadata.get(LORA_ADAPTER_METADATA_KEY, "{}"))
    alpha = next((float(v) for k, v in adapter.items() if k.endswith(".lora_alpha")), float(rank))
    return LoraFileInfo("diffusers", rank, alpha, metadata)


def load_lora_into(denoiser: torch.nn.Module, text_encoders: dict[str, torch.nn.Module], path: Path,
                   adapter_name: str = "default", text_encoder_names: tuple[str, ...] | None = None) -> int:
    """Copy a kohya or diffusers LoRA file (one we wrote, or a user's) into existing adapters; returns modules loaded.

    For resume and "continue from a LoRA file". The adapters must exist already (add_lora with the file's rank,
    see lora_file_info). If the file's alpha differs from the adapter's, lora_up is rescaled so the weight change
    is exactly the file's. Every LoRA module in the file must find its layer, or LoraLoadError names the keys.
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    text_encoder_names = text_encoder_names or tuple(text_encoders)
    components = {_denoiser_component(denoiser): denoiser, **text_encoders}
    targets = {}  # file module name -> (layer, file alpha or None)
    kohya_prefixes = _kohya_prefixes(text_encoder_names)
    for component, module in components.items():
        for layer_path, layer in lora_layers(module, adapter_name).items():
            targets[f"{component}.{layer_path}"] = layer
            if component in kohya_prefixes:
                kohya_path = ("text_model." + layer_path) if (component.startswith("text_encoder")
                                                              and _is_flattened_clip(module)) else layer_path
                targets[kohya_prefixes[component] + "_" + kohya_path.replace(".", "_")] = layer

    adapter_alphas = _file_adapter_alphas(path)
    loaded, unmatched = 0, []
    for key in tensors:
        m = re.match(r"(.+)\.(lora_down|lora_A)\.weight$", key)
        if not m:
            continue
        name, is_kohya = m[1], m[2] == "lora_down"
        up_key = f"{name}.lora_up.weight" if is_kohya else f"{name}.lora_B.weight"
        layer = targets.get(name)
        if layer is None or up_key not in tensors:
            unmatched.append(key)
            continue
        rank = tensors[key].shape[0]
        if f"{name}.alpha" in tensors:
            file_alpha = float(tensors[f"{name}.alpha"])
        else:
            file_alpha = adapter_alphas.get(name.split(".", 1)[0], float(rank))
        scale_fix = (file_alpha / rank) / layer.scaling[adapter_name]  # file scale / adapter scale
        with torch.no_grad():
            _copy_checked(layer.lora_A[adapter_name].weight, tensors[key], key)
            _copy_checked(layer.lora_B[adapter_name].weight, tensors[up_key] * scale_fix, up_key)
        loaded += 1
    if unmatched:
        raise LoraLoadError(f"{path}: {len(unmatched)} LoRA modules match no adapter layer "
                            f"(first: {', '.join(unmatched[:5])})")
    return loaded


def _file_adapter_alphas(path: Path) -> dict[str, float]:
    """{component: lora_alpha} from a diffusers-format header (empty for kohya files)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        adapter = json.loads((f.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY, "{}"))
    return {k.split(".", 1)[0]: float(v) for k, v in adapter.items() if k.endswith(".lora_alpha")}


def _copy_checked(param: torch.nn.Parameter, value: torch.Tensor, key: str) -> None:
    if param.shape != value.shape:
        raise LoraLoadError(f"{key}: shape {tuple(value.shape)} in the file, {tuple(param.shape)} in the adapter "
                            "(was the adapter created with the file's rank? see lora_file_info)")
    param.copy_(value.to(param.dtype))
