"""The VRAM tiers of "Will it fit?": presets/<family>-lora-<N>gb.yaml hold each family's memory settings for a card
of N GB, with their sources; the files are the one table of those settings.

    tiers = fit_tiers.tiers_for("zimage")              # {"24 GB": Tier, "16 GB": ..., "8 GB": ...}, largest first
    name = fit_tiers.tier_for_vram("zimage", 11.99)    # "12 GB": the tier made for that card
    updates = fit_tiers.tier_updates(form, tiers[name], values)   # only the memory keys change

A family is the file's model.family (the file name's prefix says the same; tests/test_fit_gauge.py holds them
together). Torch-free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.config.fields import get_value
from engine.config.load import ConfigError, load_preset
from engine.models.families import capabilities
from engine.models.fit import EIGHT_BIT, OPTIMIZER_STATE_BYTES, PRECISION_BYTES
from ui.fields import Form, to_widget
from ui.presets import PROJECT_ROOT

PRESETS_DIR = PROJECT_ROOT / "presets"
TIER_FILE = re.compile(r"^(?P<family>[a-z0-9_]+)-lora-(?P<gb>\d+)gb$")   # flux-lora-24gb: FLUX's "24 GB" tier

# What a tier sets: the keys its files choose for memory. Rank, alpha and the text-encoder policy stay (the
# profiles choose them for quality); model files, dataset, prompts and outputs stay.
TIER_KEYS = ("model.quantize_base", "model.block_swap", "model.text_encoder_fp8", "training.precision",
             "training.batch_size",
             "training.gradient_checkpointing", "training.cache_latents", "training.cache_text_embeddings",
             "dataset.resolution_px", "dataset.min_bucket_px", "dataset.max_bucket_px", "optimizers.unet.type")
BUCKET_KEYS = ("dataset.min_bucket_px", "dataset.max_bucket_px")   # they travel with the resolution they bracket
OPTIMIZER_KEYS = ("optimizers.unet.lr", "optimizers.unet.params")  # set with another optimizer's type only
# Settings that also shape quality: where the form is already lighter than the tier, it stays (a 512 px run is not
# raised to the tier's 1024 px, an nf4 base not raised to fp8). Each maps a value to what it costs in memory.
BASE_BYTES = {"none": 2, "fp8": 1, "int8": 1, "nf4": 0.5}
LIGHTER_STAYS = {"dataset.resolution_px": int, "training.batch_size": int, "model.quantize_base": BASE_BYTES.get,
                 "optimizers.unet.type": OPTIMIZER_STATE_BYTES.get, "training.precision": PRECISION_BYTES.get}


@dataclass(frozen=True)
class Tier:
    family: str             # model.family of its file
    name: str               # "24 GB"
    file: Path
    budget_gb: float        # the card's VRAM the tier is made for (GB = 2**30 bytes, as fit counts)
    values: dict            # preset key -> value, for TIER_KEYS and OPTIMIZER_KEYS


def load_tiers(presets_dir: Path = PRESETS_DIR) -> dict[str, dict[str, Tier]]:
    """{family: {"24 GB": Tier, ...}} from presets/<family>-lora-<N>gb.yaml, the largest card first."""
    tiers = []
    for path in sorted(presets_dir.glob("*-lora-*gb.yaml")):
        match = TIER_FILE.match(path.stem)
        if match:
            preset = load_preset(path)   # resolved: keys the file leaves out hold the schema's defaults
            values = {key: get_value(preset, key) for key in (*TIER_KEYS, *OPTIMIZER_KEYS)}
            gb = match["gb"]
            tiers.append(Tier(preset.model.family, f"{gb} GB", path, float(gb), values))
    out: dict[str, dict[str, Tier]] = {}
    for tier in sorted(tiers, key=lambda t: -t.budget_gb):
        out.setdefault(tier.family, {})[tier.name] = tier
    return out


TIERS = load_tiers()


def tiers_for(family: str | None) -> dict[str, Tier]:
    """The tiers of model.family `family`, largest card first; {} for a family without tier files."""
    return TIERS.get(family or "", {})


def card_choices(family: str | None) -> list[str]:
    """What the picker compares with besides this GPU: the family's tiers, or (a family without tier files) the
    card sizes every other family's tiers are made for, so an estimate can still be held against a card."""
    own = tiers_for(family)
    if own:
        return list(own)
    sizes = sorted({t.budget_gb for tiers in TIERS.values() for t in tiers.values()}, reverse=True)
    return [f"{gb:g} GB" for gb in sizes]


def tier_for_vram(family: str | None, vram_gb: float | None) -> str | None:
    """The family's tier made for a card of vram_gb: the largest that is not larger (the smallest for a smaller
    card). A card reports a little under its label (a 16 GB card: 15.99), hence the half GB."""
    tiers = tiers_for(family)
    if vram_gb is None or not tiers:
        return None
    fitting = [name for name, t in tiers.items() if t.budget_gb <= vram_gb + 0.5]
    return fitting[0] if fitting else list(tiers)[-1]


def tier_updates(form: Form, tier: Tier, values: dict | None = None) -> dict:
    """Widget updates that put a tier's memory settings into the form (TIER_KEYS); nothing else changes.
    values: the form as Gradio passes it ({widget: value}); where it is valid, a setting of LIGHTER_STAYS that is
    already lighter stays, and another optimizer comes with the tier's learning rate and parameters (Prodigy's
    lr 1.0 would wreck AdamW), except AdamW and Lion, which become their 8-bit twins and keep theirs."""
    theirs = tier.values
    mine = _valid_values(form, values)
    chosen = {key: theirs[key] for key in TIER_KEYS}
    for key, cost in LIGHTER_STAYS.items():
        if key in mine and (cost(mine[key]) or 0) <= (cost(theirs[key]) or 0):
            chosen[key] = mine[key]
    if mine and chosen["dataset.resolution_px"] == mine["dataset.resolution_px"]:
        chosen.update({key: mine[key] for key in BUCKET_KEYS})   # they bracket the kept resolution already
    old, new = mine.get("optimizers.unet.type"), chosen["optimizers.unet.type"]
    if old != new and EIGHT_BIT.get(old) != new:
        chosen.update({key: theirs[key] for key in OPTIMIZER_KEYS})
    return {form.widgets[k]: to_widget(form.specs[k], v) for k, v in chosen.items() if k in form.widgets}


def _valid_values(form: Form, values: dict | None) -> dict:
    """{key: preset value} of the keys a tier reads, when the form is a valid preset; else {}."""
    try:
        preset = form.to_preset(values) if values else None
    except ConfigError:
        preset = None
    return {} if preset is None else {key: get_value(preset, key) for key in (*TIER_KEYS, *OPTIMIZER_KEYS)}


def family_label(family: str | None) -> str:
    """How messages name the family ("Z-Image"); the name as typed for one the registry does not know."""
    try:
        return capabilities(family).label
    except Exception:  # noqa: BLE001 - an unknown family is reported next to its own field
        return str(family)


def tier_help(form: Form, family: str | None) -> str:
    """One line per tier of the family with the settings it applies, as its file has them; for a family without
    tier files, what the picker offers instead."""
    tiers = tiers_for(family)
    if not tiers:
        return (f"No VRAM tier presets for {family_label(family)} yet: compare its estimate with a card size; "
                f"there is nothing to apply.")
    lines = []
    for name, tier in tiers.items():
        v = tier.values
        swap = f"block swap {v['model.block_swap']}" if v["model.block_swap"] else "no block swap"
        lines.append(f"**{name}**: {v['model.quantize_base']} base, {swap}, {v['optimizers.unet.type']}, "
                     f"{v['dataset.resolution_px']} px, batch {v['training.batch_size']} (`{tier.file.name}`)")
    labels = ", ".join(form.specs[k].label for k in TIER_KEYS if k in form.specs)
    return "  \n".join(lines) + f"  \nApply sets only {labels}; model files, dataset and rank stay. Where the form " \
                                "is lighter already (a lower resolution or batch, NF4, a lighter optimizer), it stays."
