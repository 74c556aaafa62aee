"""Presets back to plain data, YAML or JSON; saved atomically (a crash never leaves half a preset)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from engine.atomic import atomic_write_text
from engine.config.schema import OptimizerConfig, Preset, ScheduleConfig


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
