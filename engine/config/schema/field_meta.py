"""opt(): how a schema field declares its default and the metadata the loader and the GUI's form read
(help, unit, min/max, choices, advanced, env)."""
from __future__ import annotations

from dataclasses import field


def opt(default, help, *, unit=None, min=None, max=None, choices=None, choice_labels=None, advanced=False, env=None):
    """A schema field. `min`/`max` are inclusive; `choices` restricts a string (or each item of a list);
    `choice_labels` ({value: words}) is how the GUI shows a choice."""
    meta = {"help": help, "unit": unit, "min": min, "max": max, "choices": choices, "advanced": advanced, "env": env,
            "choice_labels": choice_labels or {}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)
