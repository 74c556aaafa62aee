"""The sizes of a model's parts, from the files model.* names: a diffusers folder, one checkpoint (LDM or BFL
layout), separate component files (FLUX's ComfyUI files). A part not found on this PC is taken at the real model's
size (the family's memory.py knows them), and a note says so; nothing is loaded, no torch."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from engine.models.families import memory_model
from engine.models.fit.family import NO_BLOCKS, FamilyMemory
from engine.models.fit.headers import Component, Tensors, component_from_tensors, read_header
from engine.models.fit.settings import local_path


def memory_of(family: str) -> FamilyMemory:
    """The family's memory model (engine.models.families.memory_model); a ValueError for a family without one
    (the dry run and the gauge ask memory_model first and say so in words)."""
    spec = memory_model(family)
    if spec is None:
        raise ValueError(f"no memory estimate for model.family {family}")
    return spec


@dataclass(frozen=True)
class ModelSizes:
    family: str
    components: dict            # name -> Component
    notes: tuple = ()           # what was not found and what stands in for it

    @property
    def denoiser(self) -> Component:
        return self.components[memory_of(self.family).denoiser]


def _weights_of_folder(folder: Path) -> list[Path]:
    """The .safetensors files from_pretrained reads in a diffusers component folder (one variant, all shards)."""
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if not re.search(r"\.(fp16|bf16|fp32)(-\d+-of-\d+)?\.safetensors$", f.name)]
    return plain or files


def _read_folder(folder: Path, names, spec: FamilyMemory) -> dict[str, Component]:
    """The components `names` of a diffusers folder that has weights for them."""
    found = {}
    for name in names:
        files = _weights_of_folder(folder / name)
        if files:
            tensors = {k: v for f in files for k, v in read_header(f).items()}
            found[name] = component_from_tensors(name, tensors, str(folder / name), spec.layout)
    return found


def _split_by_prefix(tensors: Tensors, prefixes: dict) -> dict[str, Tensors]:
    """A single checkpoint's tensors by component, from their key prefixes (the longest that matches)."""
    out: dict[str, Tensors] = {}
    ordered = sorted(prefixes, key=len, reverse=True)
    for key, value in tensors.items():
        prefix = next((p for p in ordered if key.startswith(p)), None)
        if prefix is not None:  # keys of no component (EMA copies, buffers) are left out
            kept = key if prefix == "model.diffusion_model." else key[len(prefix):]
            out.setdefault(prefixes[prefix], {})[kept] = value
    return out


def _known(spec: FamilyMemory, name: str, model_path: str, why: str) -> Component:
    source = f"known size of the {spec.label} {name} ({why})"
    tensors = spec.known_parts(name, model_path) if spec.known_parts is not None else None
    if tensors is None and name == spec.denoiser and spec.known_denoiser is not None:
        tensors = spec.known_denoiser(model_path)
    if tensors is not None:
        part = component_from_tensors(name, tensors, "", spec.layout if name == spec.denoiser else NO_BLOCKS)
        return replace(part, source=source, dtype="")
    params = spec.known[name]
    fp8, bnb = spec.known_fp8_bnb if name == spec.denoiser else (0, 0)
    return Component(name, params, 2 * params, fp8, bnb, source=source)


def model_sizes(model) -> ModelSizes:
    """The sizes of the model's components (ModelConfig: family, path, the family's separate files) from the
    safetensors headers; a component not found locally is taken at the real model's size, and a note says so."""
    spec = memory_of(model.family)
    wanted = (spec.denoiser, *spec.text_encoders, "vae")
    path = local_path(model.path) if model.path.strip() else None
    found: dict[str, Component] = {}
    notes = []
    try:
        if path is not None and path.is_dir():
            found.update(_read_folder(path, wanted, spec))
        elif path is not None and path.is_file() and path.suffix.lower() == ".safetensors":
            for name, tensors in _split_by_prefix(read_header(path), spec.single_file_prefixes).items():
                found[name] = component_from_tensors(name, tensors, str(path), spec.layout)
        config = local_path(model.single_file_config) if model.single_file_config.strip() else None
        if path is not None and path.is_file() and config is not None and config.is_dir():
            # single files: the parts not in the checkpoint may be in the config folder
            found.update(_read_folder(config, [n for n in wanted if n not in found], spec))
        separate = {name: getattr(model, key) for name, key in spec.separate_keys.items()}
        for name, file in separate.items():
            file = local_path(file) if file else None
            if name in wanted and file is not None and file.is_file() and file.suffix.lower() == ".safetensors":
                found[name] = component_from_tensors(name, read_header(file), str(file), spec.layout)
    except Exception as e:  # noqa: BLE001 - a damaged header: the loader names the file; the estimate falls back
        found, notes = {}, [f"the model files could not be read ({type(e).__name__}: {e})"]
    if path is None:
        why = "model.path is empty"
    elif not path.exists():
        why = f"{model.path} is not a file or folder on this PC"
    else:
        why = f"not found in {path.name}"
    for name in wanted:
        if name not in found:
            found[name] = _known(spec, name, model.path, why)
    missing = [n for n in wanted if found[n].known]
    if missing:
        notes.append(f"{', '.join(missing)}: {why}, so the sizes of the real {spec.label} are used")
    return ModelSizes(model.family, found, tuple(notes))
