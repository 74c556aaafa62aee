"""The schema walked as data, by key path ('training.batch_size'): for the GUI's form, the environment overrides
and docs. Torch-free."""
from __future__ import annotations

import dataclasses
import typing

from engine.config.schema import Preset


def join_key(path: str, key) -> str:
    """'training' + 'batch_size' -> 'training.batch_size' ('' + 'model' -> 'model')."""
    return f"{path}.{key}" if path else str(key)


def iter_fields(cls=Preset, prefix=""):
    """(key_path, dataclasses.Field) for every leaf field, e.g. ('training.batch_size', Field)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = join_key(prefix, f.name)
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
