"""Plain-dict registries with lookups that fail in the user's words (torch-free)."""
from __future__ import annotations

import difflib


def suggest(value: str, choices) -> str:
    """' (did you mean 'x'?)' or '' — appended to error messages."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def choose(registry: dict, key: str, field: str):
    """registry[key], or a ValueError naming the field, the valid keys and the closest one."""
    try:
        return registry[key]
    except KeyError:
        raise ValueError(
            f"{field}: {key!r} is not one of {', '.join(map(str, registry))}{suggest(key, registry)}"
        ) from None
