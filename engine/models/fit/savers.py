"""The ways to fit: memory savers tried on copies of the Settings, cheapest first (in speed, then quality), each at
its mildest setting that brings the training peak under the card's free memory."""
from __future__ import annotations

from dataclasses import dataclass, replace

from engine.models.fit.figures import EIGHT_BIT, RESOLUTIONS_PX
from engine.models.fit.peak import estimate
from engine.models.fit.settings import Settings
from engine.models.fit.sizes import ModelSizes


@dataclass(frozen=True)
class Saver:
    """One change that lowers the peak: its words, the preset keys it sets, and what it saves."""

    words: str                  # "fp8 base", "block swap 12", "adamw8bit", "512 px"
    changes: dict               # preset key -> value, e.g. {"model.quantize_base": "fp8"}
    saves_gb: float             # VRAM saved against the settings before it
    vram_gb: float              # the predicted peak with it (and the savers before it in its option)


def _candidates(kind: str, sizes: ModelSizes, s: Settings) -> list[tuple[str, dict, Settings]]:
    """The settings a saver offers, mildest first: [(words, preset changes, new settings)]."""
    if kind == "fp8" and s.quantize_base == "none" and s.network_type == "lora":
        return [("fp8 base", {"model.quantize_base": "fp8"}, replace(s, quantize_base="fp8"))]
    if kind == "block swap" and s.network_type == "lora":
        return [(f"block swap {n}", {"model.block_swap": n}, replace(s, block_swap=n))
                for n in range(s.block_swap + 1, len(sizes.denoiser.blocks) + 1)]
    if kind == "8-bit optimizer" and s.optimizer in EIGHT_BIT:
        eight = EIGHT_BIT[s.optimizer]
        return [(eight, {"optimizers.unet.type": eight}, replace(s, optimizer=eight))]
    if kind == "resolution":
        return [(f"{px} px", {"dataset.resolution_px": px}, replace(s, resolution_px=px))
                for px in RESOLUTIONS_PX if px < s.resolution_px]
    return []


SAVERS = ("fp8", "block swap", "8-bit optimizer", "resolution")   # cheapest first: in speed, then quality


def advice(sizes: ModelSizes, s: Settings, budget_gb: float) -> list[tuple[Saver, ...]]:
    """Ways to bring the training peak under budget_gb, best first; [] when it fits already. Each option is a tuple
    of savers turned on together. The first is the cheapest path: the savers in cost order (SAVERS), each at its
    mildest setting that fits, or at its strongest before the next one is added. Then every saver that fits on its
    own (at its mildest setting that does). An option whose last saver's vram_gb is over the budget falls short.
    (The caching phases are not helped by these savers; Estimate.phases has them.)"""
    def peak(settings: Settings) -> float:
        return estimate(sizes, settings).phases["training"]

    start = peak(s)
    if start <= budget_gb:
        return []
    path, current, before = [], s, start
    for kind in SAVERS:
        candidates = _candidates(kind, sizes, current)
        peaks = [peak(cand) for _, _, cand in candidates]
        if not peaks or min(peaks) >= before:
            continue
        pick = next((i for i, p in enumerate(peaks) if p <= budget_gb), len(peaks) - 1)
        words, changes, current = candidates[pick]
        path.append(Saver(words, changes, before - peaks[pick], peaks[pick]))
        before = peaks[pick]
        if before <= budget_gb:
            break
    options = [tuple(path)] if path else []
    for kind in SAVERS:
        for words, changes, cand in _candidates(kind, sizes, s):
            after = peak(cand)
            if after <= budget_gb:
                if (words,) != tuple(sv.words for sv in path):
                    options.append((Saver(words, changes, start - after, after),))
                break
    return options

