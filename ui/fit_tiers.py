"""The VRAM tiers of "Will it fit?": presets/<family>-lora-<N>gb.yaml hold each family's memory settings for a card
of N GB, with their sources; the files are the one table of those settings. A family whose models come in sizes has
tiers per size: presets/<family>-<variant>-lora-<N>gb.yaml, the variant naming the model (flux2-klein9b-lora-16gb:
FLUX.2 klein 9B on a 16 GB card), and two sizes may each have a tier for the same card.

    tiers = fit_tiers.tiers_for("zimage")              # {"24 GB": Tier, "16 GB": ..., "8 GB": ...}, largest first
    name = fit_tiers.tier_for_vram("zimage", 11.99)    # "12 GB": the tier made for that card
    fit_tiers.tiers_for("flux2")                       # {"9B · 24 GB", "9B · 16 GB", "4B · 16 GB", "4B · 12 GB"}
    fit_tiers.tier_for_vram("flux2", 15.99, "black-forest-labs/FLUX.2-klein-base-9B")   # "9B · 16 GB"
    updates = fit_tiers.tier_updates(form, tiers[name], values)   # only the memory keys change

A tier with a variant is named by its model size and card ("9B · 16 GB"): the picker sits under the family's label
("FLUX.2 klein"), so the size is what tells its tiers apart. Which size a form trains is read from model.path's name
(9b in it: the 9B; see variant_for), and a card is given the tier of that size; the model files stay as they are.

A family is the file's model.family (the file name's prefix says the same; tests/test_fit_gauge.py holds them
together). Torch-free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from engine.config.fields import get_value
from engine.config.load import ConfigError, load_preset
from engine.models.families import capabilities
from engine.models.fit import EIGHT_BIT, OPTIMIZER_STATE_BYTES, PRECISION_BYTES
from ui.fields import Form, to_widget
from ui.presets import PROJECT_ROOT

PRESETS_DIR = PROJECT_ROOT / "presets"
# flux-lora-24gb: FLUX's "24 GB" tier; flux2-klein4b-lora-12gb: FLUX.2 klein 4B's "4B · 12 GB"
TIER_FILE = re.compile(r"^(?P<family>[a-z0-9_]+?)(?:-(?P<variant>[a-z0-9_]+))?-lora-(?P<gb>\d+)gb$")
# a model size in a name: the 9b of klein9b, FLUX.2-klein-base-9B or flux-2-klein-base-9b.safetensors (not the 8 of
# 8bit, nor 19b as 9b)
MODEL_SIZE = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)b(?![a-z0-9])")
HASH = re.compile(r"[0-9a-f]{16,}")   # a Hub cache's snapshot folder: its hex says nothing of the model

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
    name: str               # "24 GB"; with a variant, its model size first: "9B · 16 GB"
    file: Path
    budget_gb: float        # the card's VRAM the tier is made for (GB = 2**30 bytes, as fit counts)
    values: dict            # preset key -> value, for TIER_KEYS and OPTIMIZER_KEYS
    variant: str = ""       # the model it is for, as its file names it ("klein9b"); "" for the family's only model

    @property
    def model_size(self) -> float | None:
        """The variant's model size in billions (klein9b: 9.0); None without one."""
        return _size_of(self.variant)

    @property
    def variant_label(self) -> str:
        """How the tier's name says its variant: the model size ("9B"), else the variant as its file has it."""
        size = MODEL_SIZE.search(self.variant)
        return f"{size[1]}B" if size else self.variant


def _size_of(text: str) -> float | None:
    size = MODEL_SIZE.search(text)
    return float(size[1]) if size else None


def load_tiers(presets_dir: Path = PRESETS_DIR) -> dict[str, dict[str, Tier]]:
    """{family: {"24 GB": Tier, ...}} from presets/<family>[-<variant>]-lora-<N>gb.yaml: per variant (the larger
    model first), the largest card first."""
    tiers = []
    for path in sorted(presets_dir.glob("*-lora-*gb.yaml")):
        match = TIER_FILE.match(path.stem)
        if match:
            preset = load_preset(path)   # resolved: keys the file leaves out hold the schema's defaults
            values = {key: get_value(preset, key) for key in (*TIER_KEYS, *OPTIMIZER_KEYS)}
            gb, variant = match["gb"], match["variant"] or ""
            tier = Tier(preset.model.family, f"{gb} GB", path, float(gb), values, variant)
            if variant:
                tier = replace(tier, name=f"{tier.variant_label} · {gb} GB")
            tiers.append(tier)
    out: dict[str, dict[str, Tier]] = {}
    for tier in sorted(tiers, key=lambda t: (-(t.model_size or 0), t.variant, -t.budget_gb)):
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


def variants(family: str | None) -> list[str]:
    """The variants the family's tiers are for, the larger model first; [""] for a family with one model, [] for a
    family without tier files."""
    return list(dict.fromkeys(t.variant for t in tiers_for(family).values()))


def default_variant(family: str | None) -> str:
    """The variant a model.path that names none of them gets: the family's plain tiers, else its smallest model."""
    found = variants(family)
    if "" in found or not found:
        return ""
    return min(found, key=lambda v: (_size_of(v) is None, _size_of(v) or 0, v))


def variant_for(family: str | None, model_path: str | None) -> str:
    """The variant of the family's tiers that model.path is: the one whose model size (or variant name) its name
    says, "black-forest-labs/FLUX.2-klein-base-9B" or "D:/ComfyUI/flux-2-klein-base-9b.safetensors" -> "klein9b";
    a name that says none (a snapshot's hash) is looked for in its folders, from the nearest; else
    default_variant. "" for a family with one model."""
    found = [v for v in variants(family) if v]
    parts = [part.lower() for part in re.split(r"[\\/]+", (model_path or "").strip())
             if part and not HASH.fullmatch(part.lower())]
    for part in reversed(parts):
        sizes = {float(size) for size in MODEL_SIZE.findall(part)}
        for variant in found:
            size = _size_of(variant)
            if (size is not None and size in sizes) or (size is None and variant in part):
                return variant
    return default_variant(family)


def tier_for_vram(family: str | None, vram_gb: float | None, model_path: str | None = None) -> str | None:
    """The family's tier made for a card of vram_gb and the model at model_path (its variant: variant_for): the
    largest that is not larger (the smallest for a smaller card). A card reports a little under its label (a 16 GB
    card: 15.99), hence the half GB."""
    variant = variant_for(family, model_path)
    tiers = {name: t for name, t in tiers_for(family).items() if t.variant == variant}
    if vram_gb is None or not tiers:
        return None
    fitting = [name for name, t in tiers.items() if t.budget_gb <= vram_gb + 0.5]
    return fitting[0] if fitting else list(tiers)[-1]


def tier_to_apply(family: str | None, choice: str | None, vram_gb: float | None,
                  model_path: str | None = None) -> str | None:
    """The tier Apply sets for the picker's choice: the chosen tier where it is for the form's model (variant_for),
    else the model's own tier for that card (a 9B's "9B · 24 GB" chosen for a 4B model: the 4B's tier for 24 GB);
    for "this GPU" or a card size, the model's tier for vram_gb (that card's VRAM)."""
    tiers = tiers_for(family)
    if choice in tiers:
        if tiers[choice].variant == variant_for(family, model_path):
            return choice
        vram_gb = tiers[choice].budget_gb
    return tier_for_vram(family, vram_gb, model_path)


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


def tier_help(form: Form, family: str | None, model_path: str | None = None) -> str:
    """One line per tier of the family with the settings it applies, as its file has them; for a family whose
    models come in sizes, which size's tiers Apply takes for model_path; for a family without tier files, what the
    picker offers instead."""
    tiers = tiers_for(family)
    if not tiers:
        return (f"No VRAM tier presets for {family_label(family)} yet: compare its estimate with a card size; "
                f"there is nothing to apply.")
    mine = variant_for(family, model_path)
    lines = []
    for name, tier in tiers.items():
        v = tier.values
        swap = f"block swap {v['model.block_swap']}" if v["model.block_swap"] else "no block swap"
        encoder = ", text encoder in fp8" if v["model.text_encoder_fp8"] else ""
        ours = " ← this model" if tier.variant and tier.variant == mine else ""
        base = {"none": "bf16"}.get(v["model.quantize_base"], v["model.quantize_base"])   # as its widget says
        lines.append(f"**{name}**: {base} base{encoder}, {swap}, {v['optimizers.unet.type']}, "
                     f"{v['dataset.resolution_px']} px, batch {v['training.batch_size']} (`{tier.file.name}`){ours}")
    labels = ", ".join(form.specs[k].label for k in TIER_KEYS if k in form.specs)
    sized = [t for t in tiers.values() if t.variant]
    if sized:
        named = {t.variant: t.variant_label for t in sized}
        others = " or ".join(label for variant, label in named.items() if variant != default_variant(family))
        lines.append(f"Apply takes the tiers of the base model's size: {others} in its name → the {others} tiers, "
                     f"any other → the {named[default_variant(family)]} tiers. This model: **{named[mine]}**.")
    return "  \n".join(lines) + f"  \nApply sets only {labels}; model files, dataset and rank stay. Where the form " \
                                "is lighter already (a lower resolution or batch, NF4, a lighter optimizer), it stays."
