"""Writing LoRA files in the formats UIs load (adapters and loading back: lora.py; the load self-check that runs on
every exported file: lora_check.py).

Formats (EXPORT_FORMATS; keys equal the preset's `export.format` values):
  kohya      A1111 / Forge, ComfyUI and sd-scripts: `lora_unet_<module>` / `lora_te_…` (one text encoder) or
             `lora_te1_…`/`lora_te2_…` (two), `.lora_down.weight`, `.lora_up.weight`, `.alpha`, plus sd-scripts
             `ss_*` and `modelspec.*` metadata (A1111 shows these in its LoRA card). Denoiser modules are named as
             sd-scripts names them (the family's KohyaNaming, lora_naming.py): diffusers paths for SD1.x/SD2, the original
             `input_blocks/middle_block/output_blocks` paths for SDXL, Black Forest Labs' names for FLUX, whose
             fused q/k/v layers hold several adapter layers each (lora_names.py; tests/lora_name_rules.py).
  diffusers  peft keys under the pipeline's component names (`unet.`/`transformer.`/`text_encoder.`), with the peft
             config in the `lora_adapter_metadata` header, exactly what `<Pipeline>.save_lora_weights` writes.
             For diffusers / Python: for SD1.x/SD2/SDXL, A1111/Forge and ComfyUI match none of its keys. ComfyUI
             maps FLUX's peft keys but reads no alpha from them (it scales by 1), so with alpha != rank a FLUX
             LoRA in this format loads at the wrong strength there; kohya is the format for ComfyUI.

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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.atomic import atomic_save_file
from engine.models.lora import LORA_ADAPTER_METADATA_KEY, denoiser_component, kohya_names, kohya_prefixes, \
    lora_layers


@dataclass(frozen=True)
class LoraExportInfo:
    """What the file's metadata says about the training run (everything is written as a string)."""

    title: str                                  # modelspec.title and ss_output_name
    base_model_version: str                     # ss_base_model_version: sd_v1, sd_v2_768_v, sdxl_base_v1-0, flux1
    architecture: str                           # modelspec.architecture, e.g. stable-diffusion-xl-v1-base/lora
    prediction_type: str = "epsilon"            # modelspec.prediction_type: epsilon | v; "" writes none (FLUX)
    implementation: str = "diffusers"           # modelspec.implementation, as sd-scripts writes it per family
    training_started_at: float = 0.0            # ss_training_started_at (unix seconds; 0: now)
    resolution_px: tuple[int, int] = (512, 512)  # training (width, height)
    text_encoder_names: tuple[str, ...] = ("text_encoder",)  # ALL the base model's text encoders, in order
    steps: int = 0                              # optimizer steps done (ss_steps)
    epoch: int = 0
    tag_frequency: dict = field(default_factory=dict)  # {dataset_folder: {tag: count}} (ss_tag_frequency)
    training_comment: str = ""
    base_model_name: str = ""                   # ss_sd_model_name: the checkpoint file/folder trained on
    trigger_phrase: str = ""                    # modelspec.trigger_phrase
    extra: dict = field(default_factory=dict)   # more ss_* keys the trainer knows (learning rates, seed, optimizer…)
    naming: object = None                       # the family's KohyaNaming (lora_naming.py); None: PLAIN


def save_lora(path: Path, fmt: str, denoiser: torch.nn.Module, text_encoders: dict[str, torch.nn.Module],
              metadata_info: LoraExportInfo, adapter_name: str = "default", dtype=torch.float16) -> Path:
    """Write the adapters of `denoiser` and of `text_encoders` ({pipeline component name: module}) to `path`.

    Only modules that carry `adapter_name` are written, so a frozen text encoder can be passed or left out.
    """
    from engine.registry import choose

    to_tensors = choose(EXPORT_FORMATS, fmt, "export.format")
    components = {denoiser_component(denoiser): denoiser, **text_encoders}
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
    from engine.models.lora_naming import PLAIN

    naming = info.naming or PLAIN
    prefixes = dict(naming.prefixes) if naming.prefixes else kohya_prefixes(info.text_encoder_names)
    tensors = {}
    for component, module in components.items():
        if naming.fused is not None and not component.startswith("text_encoder"):
            tensors.update(naming.fused.tensors(module, lora_layers(module, adapter_name), adapter_name))
            continue
        if component not in prefixes:
            raise ValueError(
                f"export.format: 'kohya' has no layout for {type(module).__name__} ({component}); "
                "use format 'diffusers', which diffusers and ComfyUI load (kohya FLUX LoRAs use BFL names)")
        for path, layer in lora_layers(module, adapter_name).items():
            name = kohya_names(component, path, module, prefixes, naming)[0]
            tensors[f"{name}.lora_down.weight"] = layer.lora_A[adapter_name].weight
            tensors[f"{name}.lora_up.weight"] = layer.lora_B[adapter_name].weight
            # trap 1: kohya's scale is alpha / rank, so alpha = peft's scaling * rank (also right for rsLoRA).
            tensors[f"{name}.alpha"] = torch.tensor(layer.scaling[adapter_name] * layer.r[adapter_name])
    return tensors, {"ss_network_module": naming.network_module}


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
        "ss_v2": "False",   # the family's metadata says True for SD 2.x (info.extra)
        "ss_resolution": f"({width}, {height})",
        "ss_tag_frequency": json.dumps(info.tag_frequency, ensure_ascii=False),
        "ss_training_comment": info.training_comment,
        "ss_steps": str(info.steps),
        "ss_epoch": str(info.epoch),
        "ss_sd_model_name": info.base_model_name,
        "ss_training_started_at": str(info.training_started_at or now.timestamp()),
        "ss_training_finished_at": str(now.timestamp()),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": info.architecture,
        "modelspec.implementation": info.implementation,
        "modelspec.title": info.title,
        "modelspec.date": now.date().isoformat(),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.trigger_phrase": info.trigger_phrase,
    }
    if info.prediction_type:  # sd-scripts writes none for FLUX
        metadata["modelspec.prediction_type"] = info.prediction_type
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in info.extra.items()})
    return metadata


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(float(x))


def _jsonable(value):
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)
