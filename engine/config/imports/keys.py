"""Writing a dotted Easel key into preset data."""
from __future__ import annotations


def put(preset: dict, key: str, value) -> None:
    """preset["a"]["b"]["c"] = value for key "a.b.c"."""
    *parents, last = key.split(".")
    node = preset
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
