"""Plain data (from YAML, JSON or `--set`) into the schema's typed dataclasses, collecting every problem.

    preset = build(Preset, data, "", problems)     # problems: list of (key_path, message), appended to

Strict: unknown keys, wrong types and out-of-range values are problems with the key path and, where it helps, the
closest valid key. Optimizer and schedule sections keep their type's own parameters (config/optim_specs.py).
"""
from __future__ import annotations

import copy
import dataclasses
import typing

from engine.config import schema
from engine.config.fields import join_key
from engine.config.optim_specs import OPTIMIZER_PARAMS, PAIR, SCHEDULE_PARAMS
from engine.config.schema import OptimizerConfig, ScheduleConfig
from engine.registry import suggest


def build(cls, data, path: str, problems: list):
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
        problems.append((join_key(path, key), f"unknown key{suggest(key, fields)}; allowed here: {allowed}"))
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = join_key(path, name)
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
        return build(hint, value, key, problems)
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
    given = set(value)
    for comp, spec in value.items():
        alias = schema.COMPONENT_ALIASES.get(comp)
        if alias and alias in given:
            problems.append((f"{key}.{comp}", f"is another name for {key}.{alias}, which is also given; keep one"))
            continue
        comp = alias or comp
        if comp not in meta["keys"]:
            problems.append((f"{key}.{comp}", f"unknown component{suggest(comp, meta['keys'])}; "
                                              f"allowed: {', '.join(meta['keys'])}"))
            continue
        out[comp] = build(meta["item"], spec if spec is not None else {}, f"{key}.{comp}", problems)
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
            problems.append((join_key(path, name), f"is not a parameter of {kind}{suggest(name, [*own, *specs])}; "
                                                f"allowed: {allowed}"))
            continue
        converted = _scalar(specs[name][1], value, join_key(path, name), problems)
        if converted is not _BAD:
            params[name] = converted
    return params
