"""Load, validate, override, migrate and save presets (torch-free; the GUI and the engine both use it).

    preset = load_preset("presets/sd15-lora.yaml", overrides=["training.max_steps=200"], env=os.environ)
    save_preset(preset, "run/preset.yaml")

Every problem in a preset is collected and reported at once in a ConfigError, one line per problem, each starting
with its key path: `model.family: 'sdx' is not one of sd15, sd2, sdxl, flux (did you mean 'sdxl'?)`.
The schema itself (fields, defaults, help) is engine/schema.py.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import typing
from pathlib import Path

import yaml

from engine import schema
from engine.atomic import atomic_write_text
from engine.optim_specs import OPTIMIZER_PARAMS, PAIR, SCHEDULE_PARAMS
from engine.registry import suggest
from engine.schema import CURRENT_VERSION, OptimizerConfig, Preset, ScheduleConfig


class ConfigError(ValueError):
    """All problems of one preset; `problems` is a list of (key_path, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str = ""):
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        lines = [f"{key}: {msg}" if key else msg for key, msg in problems]
        super().__init__(head + f"{len(problems)} problem(s) in the preset\n  " + "\n  ".join(lines))


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
    mapping = {meta_env: key for key, _, meta_env in _env_fields()}
    mapping["UNET_LR"] = "optimizers.unet.lr"
    return [f"{key}={env[name]}" for name, key in mapping.items() if env.get(name, "") != ""]


def _env_fields():
    for key, f in iter_fields():
        if f.metadata.get("env"):
            yield key, f, f.metadata["env"]


# --- loading ---------------------------------------------------------------------------------------------------------
def read_preset_file(path: str | os.PathLike) -> dict:
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
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("", f"{path} must hold a mapping of sections (model:, dataset:, ...)")])
    return data


def load_preset(path, overrides: list[str] = (), env: typing.Mapping[str, str] | None = None) -> Preset:
    """Read a YAML/JSON preset file, apply environment variables then `--set` overrides, and validate."""
    try:
        return preset_from_dict(read_preset_file(path), overrides, env)
    except ConfigError as e:
        raise ConfigError(e.problems, source=str(path)) from None


def preset_from_dict(data: dict, overrides: list[str] = (), env=None) -> Preset:
    data = migrate(json.loads(json.dumps(data, default=str)))  # a deep copy of plain data
    problems: list[tuple[str, str]] = []
    for item in [*(env_overrides(env) if env else []), *overrides]:
        _apply_override(data, item, problems)
    preset = _build(Preset, data, "", problems)
    if not problems:
        problems += validate(preset)
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


def _build(cls, data, path: str, problems: list):
    """Build dataclass `cls` from `data`, appending every problem found under key path `path`."""
    if not isinstance(data, dict):
        problems.append((path, f"must be a section (a mapping of keys), not {data!r}"))
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    extra = {k: v for k, v in data.items() if k not in fields}
    if cls in (OptimizerConfig, ScheduleConfig):
        extra = {}  # their extra keys are type parameters, checked in _type_params
    for key in extra:
        allowed = ", ".join(fields)
        problems.append((_join(path, key), f"unknown key{suggest(key, fields)}; allowed here: {allowed}"))
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = _join(path, name)
        if name == "params" and cls in (OptimizerConfig, ScheduleConfig):
            continue
        values[name] = _convert(hints[name], f, data[name], key, problems)
    if cls in (OptimizerConfig, ScheduleConfig):
        values["params"] = _type_params(cls, data, values, path, problems)
    try:
        return cls(**{k: v for k, v in values.items() if v is not _BAD})
    except TypeError as e:  # cannot happen for well-formed schema; keep the message readable anyway
        problems.append((path, str(e)))
        return cls()


_BAD = object()


def _convert(hint, f: dataclasses.Field, value, key: str, problems: list):
    meta = f.metadata
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, problems)
    if "item" in meta:  # a dict of components: optimizers, schedules
        return _components(meta, value, key, problems)
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is list:
        items = value if isinstance(value, list) else [value]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else []
        item_type = type(default[0]) if default else str
        out = [_scalar(item_type, v, f"{key}[{i}]", problems, meta) for i, v in enumerate(items)]
        return _BAD if any(v is _BAD for v in out) else out
    if hint is dict:
        if not isinstance(value, dict):
            problems.append((key, f"must be a mapping, not {value!r}"))
            return _BAD
        return dict(value)
    return _scalar(hint, value, key, problems, meta)


def _scalar(kind, value, key, problems, meta=None):
    meta = meta or {}
    converted = _coerce(kind, value)
    if converted is _BAD:
        problems.append((key, f"{value!r} is not {_KIND_WORDS.get(kind, kind.__name__)}"))
        return _BAD
    choices = meta.get("choices")
    if choices and isinstance(converted, str) and converted not in choices:
        # 'AdamW' and 'cosineannealinglr' mean what they say: take the canonical spelling
        converted = next((c for c in choices if c.lower() == converted.lower()), converted)
    if choices and converted not in choices:
        problems.append((key, f"{converted!r} is not one of {', '.join(choices)}{suggest(converted, choices)}"))
        return _BAD
    lo, hi = meta.get("min"), meta.get("max")
    if kind in (int, float) and ((lo is not None and converted < lo) or (hi is not None and converted > hi)):
        unit = f" {meta['unit']}" if meta.get("unit") else ""
        problems.append((key, f"{converted!r} is out of range; allowed {lo}..{hi}{unit}"))
        return _BAD
    return converted


_KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text", PAIR: "a pair [a, b]"}


def _coerce(kind, value):
    """Value as `kind`, or _BAD. Accepts what YAML and `--set` produce for a reasonable human input."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.strip().lower() in ("true", "yes", "on")
        return _BAD
    if kind is int:
        if isinstance(value, bool):
            return _BAD
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return _coerce(int, float(value)) if value.strip() else _BAD
            except ValueError:
                return _BAD
        return value if isinstance(value, int) else _BAD
    if kind is float:
        if isinstance(value, bool):
            return _BAD
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _BAD
        return _BAD
    if kind is str:
        if isinstance(value, bool) or isinstance(value, (dict, list)) or value is None:
            return _BAD
        return str(value)
    if kind == PAIR:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            pair = [_coerce(float, v) for v in value]
            return _BAD if _BAD in pair else pair
        return _BAD
    return value


def _components(meta, value, key, problems):
    if not isinstance(value, dict):
        problems.append((key, f"must be a mapping of components ({', '.join(meta['keys'])})"))
        return _BAD
    out = {}
    for comp, spec in value.items():
        if comp not in meta["keys"]:
            problems.append((f"{key}.{comp}", f"unknown component{suggest(comp, meta['keys'])}; "
                                              f"allowed: {', '.join(meta['keys'])}"))
            continue
        out[comp] = _build(meta["item"], spec if spec is not None else {}, f"{key}.{comp}", problems)
    defaults = (schema.default_optimizers if meta["item"] is OptimizerConfig else schema.default_schedules)()
    return {**defaults, **out}


def _type_params(cls, data, values, path, problems) -> dict:
    """The flat type parameters next to `type` (e.g. betas, eta_min_factor), checked against optim_specs."""
    table = OPTIMIZER_PARAMS if cls is OptimizerConfig else SCHEDULE_PARAMS
    kind = values.get("type", cls().type)
    if kind is _BAD or kind not in table:
        return {}
    own = {f.name for f in dataclasses.fields(cls)} - {"params"}
    given = {k: v for k, v in data.items() if k not in own}
    if isinstance(data.get("params"), dict):  # also accept an explicit params: mapping
        given.update(data["params"])
    given.pop("params", None)
    specs = table[kind]
    params = {name: copy.deepcopy(spec[0]) for name, spec in specs.items()}  # resolved: every parameter written out
    for name, value in given.items():
        if name not in specs:
            allowed = ", ".join([*sorted(own), *specs]) or "(none)"
            problems.append((_join(path, name), f"is not a parameter of {kind}{suggest(name, [*own, *specs])}; "
                                                f"allowed: {allowed}"))
            continue
        converted = _scalar(specs[name][1], value, _join(path, name), problems)
        if converted is not _BAD:
            params[name] = converted
    return params


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


# --- cross-field validation ----------------------------------------------------------------------------------------
def validate(p: Preset) -> list[tuple[str, str]]:
    """Problems that involve more than one field (single fields are checked while loading)."""
    out = []
    d, t, n = p.dataset, p.training, p.network
    multiple = 16 if p.model.family == "flux" else 8
    if d.resolution_px % multiple:
        out.append(("dataset.resolution_px", f"{d.resolution_px} must be a multiple of {multiple} for "
                                             f"{p.model.family}"))
    if d.bucketing and not d.min_bucket_px <= d.resolution_px <= d.max_bucket_px:
        out.append(("dataset.resolution_px", f"{d.resolution_px} must lie between dataset.min_bucket_px "
                                             f"({d.min_bucket_px}) and dataset.max_bucket_px ({d.max_bucket_px})"))
    if d.use_reg and not d.reg_path:
        out.append(("dataset.reg_path", "dataset.use_reg is on but no regularization folder is set"))
    if t.max_steps == 0 and t.max_epochs == 0:
        out.append(("training.max_steps", "set training.max_steps or training.max_epochs (both are 0)"))
    objective = t.objective if t.objective != "auto" else p.model.prediction_type
    if p.model.family == "flux" and objective not in ("auto", "flow"):
        out.append(("training.objective", f"{objective!r} cannot train family 'flux' (use 'flow' or 'auto')"))
    if p.model.family in ("sd15", "sdxl") and objective == "flow":
        out.append(("training.objective", f"'flow' (rectified flow) needs a v-prediction base model: family sd2, "
                                          f"not {p.model.family!r}"))
    if n.te_two_phase and not n.train_text_encoder:
        out.append(("network.te_two_phase", "needs network.train_text_encoder: true"))
    if n.type == "lora" and p.model.family == "flux" and "kohya" in p.output.formats:
        out.append(("output.formats", "FLUX LoRAs are saved in the 'diffusers' format (ComfyUI and diffusers load "
                                      "it); remove 'kohya'"))
    if not p.output.formats and n.type == "lora":
        out.append(("output.formats", "choose at least one of kohya, diffusers"))
    if p.optimizers["unet"].lr is None:
        out.append(("optimizers.unet.lr", "the UNet/transformer needs a learning rate"))
    for comp, opt in p.optimizers.items():
        if opt.type == "sgd" and opt.params.get("nesterov") and not opt.params.get("momentum"):
            out.append((f"optimizers.{comp}.nesterov", "Nesterov momentum needs momentum > 0"))
    for comp, sched in p.schedules.items():
        if sched.type == "ReduceLROnPlateau" and sched.params.get("mode", "min") not in ("min", "max"):
            out.append((f"schedules.{comp}.mode", f"{sched.params['mode']!r} is not one of min, max"))
    return out


# --- saving ----------------------------------------------------------------------------------------------------------
def preset_to_dict(p) -> dict:
    """Plain data in schema order; optimizer and schedule parameters written flat next to `type`."""
    if isinstance(p, (OptimizerConfig, ScheduleConfig)):
        out = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "params"}
        return {**out, **p.params}
    if dataclasses.is_dataclass(p):
        return {f.name: preset_to_dict(getattr(p, f.name)) for f in dataclasses.fields(p)}
    if isinstance(p, dict):
        return {k: preset_to_dict(v) for k, v in p.items()}
    if isinstance(p, list):
        return [preset_to_dict(v) for v in p]
    return p


class _PlainDumper(yaml.SafeDumper):
    """No &id001 anchors: a preset is read by people, and equal lists are just equal lists."""

    def ignore_aliases(self, data):
        return True


def dump_preset(p: Preset) -> str:
    return yaml.dump(preset_to_dict(p), Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


def save_preset(p: Preset, path: str | os.PathLike) -> Path:
    """Write YAML (or JSON for a .json path) atomically: a crash never leaves half a preset."""
    path = Path(path)
    text = (json.dumps(preset_to_dict(p), indent=2, ensure_ascii=False) + "\n"
            if path.suffix.lower() == ".json" else dump_preset(p))
    return atomic_write_text(path, text)


# --- the schema as data, for the GUI and docs ------------------------------------------------------------------------
def iter_fields(cls=Preset, prefix=""):
    """(key_path, dataclasses.Field) for every leaf field, e.g. ('training.batch_size', Field)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from iter_fields(hints[f.name], key)
        elif "item" in f.metadata:
            for comp in f.metadata["keys"]:
                yield from iter_fields(f.metadata["item"], f"{key}.{comp}")
        else:
            yield key, f


def get_value(p: Preset, key: str):
    node = p
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node
