"""Load presets: read YAML/JSON, migrate old versions, apply environment and `--set` overrides, build, validate.

    preset = load_preset("presets/sd15-lora.yaml", overrides=["training.max_steps=200"], env=os.environ)

Torch-free; the GUI and the engine both use it. Every problem in a preset is collected and reported at once in a
ConfigError, one line per problem, each starting with its key path:
`model.family: 'sdx' is not one of sd15, sd2, sdxl, flux, dit (did you mean 'sdxl'?)`.
The schema (fields, defaults, help) is schema/ (one module per preset section); turning plain data into its dataclasses is convert.py; checks
across fields are validate.py; writing presets back is save.py.
"""
from __future__ import annotations

import json
import os
import typing
from pathlib import Path

import yaml

from engine.config.convert import build
from engine.config.fields import iter_fields
from engine.config.schema import CURRENT_VERSION, Preset
from engine.config.validate import validate


class ConfigError(ValueError):
    """All problems of one preset; `problems` is a list of (key_path, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "", hint: str = ""):
        self.problems = problems
        self.source = source
        self.hint = hint
        head = f"{source}: " if source else ""
        lines = [f"{key}: {msg}" if key else msg for key, msg in problems]
        super().__init__(head + f"{len(problems)} problem(s) in the preset\n  " + "\n  ".join(lines)
                         + (f"\n  -> {hint}" if hint else ""))


# --- migrations: MIGRATIONS[v] turns a version-v dict into a version-(v+1) dict ------------------------------------
def _v0_to_v1(data: dict) -> dict:
    """Version 0 (before presets carried a version) named the training section `train`."""
    if "train" in data and "training" not in data:
        data["training"] = data.pop("train")
    return data


MIGRATIONS = {0: _v0_to_v1}


def migrate(data: dict) -> dict:
    version = data.get("version", CURRENT_VERSION)
    if not isinstance(version, int) or version > CURRENT_VERSION or version < 0:
        raise ConfigError([("version", f"{version!r} is not a preset version this Easel knows "
                                       f"(0..{CURRENT_VERSION}); update Easel or fix the file")])
    while version < CURRENT_VERSION:
        data = MIGRATIONS[version](dict(data))
        version += 1
    data["version"] = CURRENT_VERSION
    return data


# --- environment variables of the FLUX identity guide --------------------------------------------------------------
def env_overrides(env: typing.Mapping[str, str]) -> list[str]:
    """`--set`-style overrides from environment variables (MODEL_PATH, RANK, UNET_LR, ...)."""
    return [f"{key}={value}" for key, (_, value) in env_sources(env).items()]


def env_sources(env: typing.Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """{preset key: (environment variable, its value)} for the variables that are set (not empty)."""
    mapping = {meta_env: key for key, _, meta_env in _env_fields()}
    mapping["UNET_LR"] = "optimizers.unet.lr"
    return {key: (name, env[name]) for name, key in mapping.items() if env.get(name, "") != ""}


def _env_fields():
    for key, f in iter_fields():
        if f.metadata.get("env"):
            yield key, f, f.metadata["env"]


# --- loading ---------------------------------------------------------------------------------------------------------
def read_preset_file(path: str | os.PathLike) -> dict:
    """The preset data of a YAML/JSON file; another trainer's config (EveryDream2, FluxFlow, kohya_ss) comes back
    converted (engine/config/imports/; import_notes says what had no Easel meaning)."""
    from engine.config.imports import imported

    data = read_data_file(path)
    found = imported(data, Path(path).parent)
    return found.data if found else data


def import_notes(path: str | os.PathLike) -> tuple[str, list[str]] | None:
    """(format, the keys with no Easel meaning) when `path` is another trainer's config; None for a preset."""
    from engine.config.imports import imported

    found = imported(read_data_file(path), Path(path).parent)
    return (found.format, found.unmapped) if found else None


def read_data_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("", f"preset file not found: {path}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([("", f"{path} is not a UTF-8 text file")]) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError([("", f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {e}")])
    if not data:  # an empty file would train every default silently
        raise ConfigError([("", f"{path} is empty: a preset holds sections like model:, dataset:, training:")],
                          hint="Start from one of the shipped presets in presets/ (Save as in the app).")
    if not isinstance(data, dict):
        raise ConfigError([("", f"{path} must hold a mapping of sections (model:, dataset:, ...)")])
    return data


def load_preset(path, overrides: list[str] = (), env: typing.Mapping[str, str] | None = None) -> Preset:
    """Read a YAML/JSON preset file, apply environment variables then `--set` overrides, and validate."""
    try:
        return preset_from_dict(read_preset_file(path), overrides, env)
    except ConfigError as e:
        raise ConfigError(e.problems, source=str(path), hint=e.hint) from None


def preset_from_dict(data: dict, overrides: list[str] = (), env=None) -> Preset:
    data = migrate(json.loads(json.dumps(data, default=str)))  # a deep copy of plain data
    problems: list[tuple[str, str]] = []
    from_env = env_sources(env) if env else {}
    for item in [*(env_overrides(env) if env else []), *overrides]:
        _apply_override(data, item, problems)
    preset = build(Preset, data, "", problems)
    if not problems:
        problems += validate(preset)
    set_on_command_line = {item.partition("=")[0].strip() for item in overrides}
    problems = [(key, f"{msg} (from the environment variable {from_env[key][0]}={from_env[key][1]})")
                if key in from_env and key not in set_on_command_line else (key, msg) for key, msg in problems]
    if problems:
        raise ConfigError(problems)
    return preset


def _apply_override(data: dict, item: str, problems: list) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        problems.append(("--set", f"{item!r} is not KEY=VALUE (e.g. training.max_steps=500)"))
        return
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            problems.append((key, "cannot set a value inside a non-section"))
            return
    node[last] = value
