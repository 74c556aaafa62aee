"""LoRA adapters (peft): add them to a model, name their modules as the LoRA formats do, and load a LoRA file
(one we wrote, or a user's; kohya or diffusers keys) back into them, for resume and "continue from a file".

Writing LoRA files is lora_export.py; the load self-check after every save is lora_check.py; how each family's
kohya files name its modules is its record's KohyaNaming (lora_naming.py; FLUX's BFL names with fused q/k/v are
engine/models/families/flux/lora_names.py).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # the header key diffusers reads the peft config from


class LoraLoadError(RuntimeError):
    """A LoRA file that does not load fully into its pipeline (names the keys that did not match)."""


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


def block_linear_targets(denoiser: torch.nn.Module, blocks: re.Pattern, wanted: dict[str, tuple[str, ...]] | None,
                         targets) -> list[str]:
    """Full module paths of the Linear layers inside a transformer's blocks that get LoRA layers. `blocks` matches
    a Linear's path in two groups, its block list and its name inside the block (transformer_blocks.3.attn.to_q:
    transformer_blocks, attn.to_q). `targets` (network.targets), when set, are suffixes of the name inside the block
    (to_q matches attn.to_q); else the names in wanted[block list], or every Linear when wanted is None."""
    names = []
    for name, module in denoiser.named_modules():
        m = blocks.match(name)
        if not m or not isinstance(module, torch.nn.Linear):
            continue
        if targets:
            if any(m[2] == t or m[2].endswith("." + t) for t in targets):
                names.append(name)
        elif wanted is None or m[2] in wanted[m[1]]:
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------- names

def denoiser_component(denoiser) -> str:
    """diffusers names the denoiser `unet` in UNet pipelines and `transformer` in DiT pipelines (FLUX, SD3)."""
    return "unet" if "UNet" in type(denoiser).__name__ else "transformer"


def denoiser_of(pipeline):
    """The pipeline's denoiser: its transformer, or its UNet."""
    return getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)


def kohya_prefixes(text_encoder_names: tuple[str, ...]) -> dict[str, str]:
    """sd-scripts: `lora_te_` when the model has one text encoder, `lora_te1_`, `lora_te2_` when it has two."""
    if len(text_encoder_names) == 1:
        return {"unet": "lora_unet", text_encoder_names[0]: "lora_te"}
    return {"unet": "lora_unet", **{name: f"lora_te{i + 1}" for i, name in enumerate(text_encoder_names)}}


def kohya_names(component: str, path: str, module, prefixes: dict[str, str], naming=None) -> list:
    """The kohya names of the LoRA module at `path` in `module` (a pipeline component), the one sd-scripts writes
    first: `lora_unet_input_blocks_4_1_proj_in` (SDXL: naming.unet_style "ldm") or `lora_unet_down_blocks_1_...`
    (SD1.x/SD2); `lora_te_text_model_encoder_layers_0_self_attn_q_proj`. A second name, in the other UNet
    style, is what a loader also accepts (older Easel files wrote SDXL in diffusers style)."""
    from engine.models.lora_naming import naming_of

    naming = naming or naming_of(module if component == "unet" else None)
    if component.startswith("text_encoder") and is_flattened_clip(module):
        path = "text_model." + path  # trap 3: A1111/ComfyUI name CLIP layers with text_model.
    prefix = prefixes[component]
    names = [naming.name(prefix, path)]
    if component == "unet" and hasattr(module, "config") and naming.ldm_alias is not None:
        ldm = naming.ldm_alias(path, module.config)
        if ldm is not None:
            names.append(naming.name(prefix, ldm))
            if naming.unet_style == "ldm":
                names.reverse()
    return names


def is_flattened_clip(module) -> bool:
    return "CLIP" in type(module).__name__ and not hasattr(module, "text_model")


# ---------------------------------------------------------------------------------------------- load back

@dataclass(frozen=True)
class LoraFileInfo:
    format: str           # kohya | diffusers
    rank: int             # of the first module (what a new adapter must be created with)
    alpha: float
    metadata: dict


def lora_file_info(path: Path) -> LoraFileInfo:
    """Format, rank and alpha of a LoRA file, so an adapter of the same shape can be created before loading.

    For a file whose modules are all fused (FLUX's qkv or linear1: several adapter layers in one, lora_naming.py),
    the rank and alpha are those of one part, which is what each adapter layer takes."""
    from safetensors import safe_open

    from engine.models.lora_naming import fused_naming, fused_size

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        keys = list(f.keys())
        downs = [k for k in keys if k.endswith((".lora_down.weight", ".lora_A.weight"))]
        if not downs:
            raise LoraLoadError(f"{path}: no LoRA weights (no *.lora_down.weight or *.lora_A.weight keys)")
        if downs[0].endswith(".lora_down.weight"):
            stems = [k.removesuffix(".lora_down.weight") for k in downs]
            stem = next((s for s in stems if fused_size(s) == 1), stems[0])  # an unfused one says it plainly
            rank = f.get_slice(f"{stem}.lora_down.weight").get_shape()[0]
            alpha = float(f.get_tensor(f"{stem}.alpha")) if f"{stem}.alpha" in keys else float(rank)
            fused = fused_naming(stem)
            if fused is not None:
                part = fused.part_rank(stem, f.get_tensor(f"{stem}.lora_down.weight"),
                                       f.get_tensor(f"{stem}.lora_up.weight"))
                rank, alpha = part, alpha * part / rank  # the same alpha / rank
            return LoraFileInfo("kohya", rank, alpha, metadata)
        rank = f.get_slice(downs[0]).get_shape()[0]
    adapter = json.loads(metadata.get(LORA_ADAPTER_METADATA_KEY, "{}"))
    alpha = next((float(v) for k, v in adapter.items() if k.endswith(".lora_alpha")), float(rank))
    return LoraFileInfo("diffusers", rank, alpha, metadata)


def lora_file_components(path: Path) -> set[str]:
    """The pipeline components a LoRA file has weights for, e.g. {"transformer", "text_encoder"}: a FLUX LoRA with a
    CLIP-L part. kohya names say `lora_unet` for any denoiser; a family's fused names (FLUX's BFL blocks) tell its
    transformer apart (lora_naming.claimed_component)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        stems = {re.sub(r"\.(lora_down|lora_A)\.weight$", "", k) for k in f.keys()
                 if k.endswith((".lora_down.weight", ".lora_A.weight"))}
    return {_component_of(stem) for stem in stems}


_KOHYA_TEXT_ENCODERS = {"lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2",
                        "lora_te3": "text_encoder_2"}  # lora_te3: sd-scripts' FLUX T5 (lora_te2 in its first versions)


def _component_of(stem: str, denoiser: str | None = None) -> str:
    """The pipeline component a file module belongs to; `denoiser` names the one `lora_unet` means, if known."""
    from engine.models.lora_naming import claimed_component

    claimed = claimed_component(stem)  # a family's own names (FLUX's BFL blocks, Z-Image's) say their component
    if claimed:
        return denoiser or claimed
    if "." in stem:  # diffusers format: the component is the first part
        return stem.split(".", 1)[0]
    if stem.startswith("lora_unet_"):
        return denoiser or "unet"
    m = re.match(r"^(lora_te\d?)_", stem)
    return _KOHYA_TEXT_ENCODERS.get(m[1], m[1]) if m else stem


def load_lora_into(denoiser: torch.nn.Module | None, text_encoders: dict[str, torch.nn.Module], path: Path,
                   adapter_name: str = "default", text_encoder_names: tuple[str, ...] | None = None,
                   components: set[str] | None = None, naming=None) -> int:
    """Copy a kohya or diffusers LoRA file (one we wrote, or a user's) into existing adapters; returns the adapter
    layers loaded (a fused FLUX module fills three or four).

    For resume and "continue from a LoRA file". The adapters must exist already (add_lora with the file's rank,
    see lora_file_info). If the file's alpha differs from the adapter's, lora_up is rescaled so the weight change
    is exactly the file's. Every LoRA module in the file must find its layer, or LoraLoadError names the keys.
    components: load only these components' parts of the file and skip the rest, e.g. {"text_encoder"} to load a
    FLUX LoRA's CLIP-L part alone (denoiser may then be None); None loads everything. naming: the family's
    KohyaNaming (None: the one whose denoiser this is, lora_naming.naming_of).
    """
    from safetensors.torch import load_file

    from engine.models.lora_naming import naming_of

    naming = naming or naming_of(denoiser)
    tensors = load_file(str(path))
    denoiser_name = denoiser_component(denoiser) if denoiser is not None else None
    targets = _file_targets(denoiser, text_encoders, text_encoder_names or tuple(text_encoders), adapter_name,
                            naming)
    adapter_alphas = _file_adapter_alphas(path)
    loaded, unmatched = 0, []
    for key in tensors:
        m = re.match(r"(.+)\.(lora_down|lora_A)\.weight$", key)
        if not m or (components is not None and _component_of(m[1], denoiser_name) not in components):
            continue
        name, is_kohya = m[1], m[2] == "lora_down"
        up_key = f"{name}.lora_up.weight" if is_kohya else f"{name}.lora_B.weight"
        parts = targets.get(name)
        if parts is None or up_key not in tensors:
            unmatched.append(key)
            continue
        down, up = tensors[key], tensors[up_key]
        rank = down.shape[0]
        if f"{name}.alpha" in tensors:
            file_alpha = float(tensors[f"{name}.alpha"])
        else:
            file_alpha = adapter_alphas.get(name.split(".", 1)[0], float(rank))
        # a part with no adapter takes the dense split, only to see whether the file trained it
        ranks = [layer.r[adapter_name] if layer is not None else rank for layer, _ in parts]
        pieces = [(down, up)] if len(parts) == 1 else naming.fused.split(name, down, up, ranks)
        for (layer, layer_path), piece in zip(parts, pieces):
            if layer is None:
                if piece[1].any():  # the file changes a layer that has no adapter
                    unmatched.append(f"{key} ({layer_path})")
                continue
            if piece is None:
                raise LoraLoadError(f"{key}: rank {rank} in the file fits adapters of rank {rank} or "
                                    f"{rank // len(parts)} (block-diagonal parts), not {layer.r[adapter_name]}")
            scale_fix = (file_alpha / rank) / layer.scaling[adapter_name]  # file scale / adapter scale
            with torch.no_grad():
                _copy_checked(layer.lora_A[adapter_name].weight, piece[0], key)
                _copy_checked(layer.lora_B[adapter_name].weight, piece[1] * scale_fix, up_key)
            loaded += 1
    if unmatched:
        raise LoraLoadError(f"{path}: {len(unmatched)} LoRA modules match no adapter layer "
                            f"(first: {', '.join(unmatched[:5])})")
    return loaded


_KOHYA_ALIASES = {"lora_te": ("lora_te1",), "lora_te1": ("lora_te",), "lora_te3": ("lora_te2",)}


def _file_targets(denoiser, text_encoders: dict, text_encoder_names: tuple, adapter_name: str,
                  naming) -> dict[str, list]:
    """{file module name: [(adapter layer or None, module path), ...]} under every name a file may use for it: the
    peft path, kohya names in both UNet styles, CLIP-L as `lora_te_` or `lora_te1_` (loaders take both), and for a
    denoiser with fused modules (FLUX's BFL names) those names, each listing all its parts."""
    fused = naming.fused if denoiser is not None else None
    components = {**({denoiser_component(denoiser): denoiser} if denoiser is not None else {}), **text_encoders}
    prefixes = dict(naming.prefixes) if naming.prefixes and denoiser is not None else \
        kohya_prefixes(text_encoder_names)
    targets = {}
    for component, module in components.items():
        layers = lora_layers(module, adapter_name)
        for layer_path, layer in layers.items():
            part = [(layer, layer_path)]
            targets[f"{component}.{layer_path}"] = part
            if component.startswith("text_encoder") and is_flattened_clip(module):
                targets[f"{component}.text_model.{layer_path}"] = part  # save_lora_weights under transformers < 5.6
            if component in prefixes:
                prefix = prefixes[component]
                for name in kohya_names(component, layer_path, module, prefixes, naming):
                    for alias in (prefix, *_KOHYA_ALIASES.get(prefix, ())):
                        targets[alias + name[len(prefix):]] = part
        if fused is not None and module is denoiser:
            for name, paths in fused.modules(module).items():
                if any(p in layers for p in paths):
                    targets[name] = [(layers.get(p), p) for p in paths]
    return targets


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
