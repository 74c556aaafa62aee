"""A model's parts as counted from the safetensors headers alone: shapes and dtypes, no tensor data.

Torch-free (safetensors' numpy backend), so the dry run and the GUI get an answer in well under a second. How a
family's files name its transformer blocks (FLUX: diffusers' or BFL's names) comes in as its BlockLayout
(engine/models/fit/family.py); the rest of the counting is the same for every family.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.models.base_storage import FP8_SKIP_PATTERNS
from engine.models.fit.family import NO_BLOCKS, BlockLayout
from engine.models.fit.figures import DTYPE_BYTES

Tensors = dict  # name -> (shape tuple, safetensors dtype string such as "BF16")

_EMBEDDING_KEYS = ("shared.weight", "embed_tokens.weight", "token_embedding.weight")   # text encoders: (vocab, width)


@dataclass(frozen=True)
class Component:
    """One part of the model as stored, counted by what the memory settings do to it."""

    name: str                   # transformer | unet | text_encoder | text_encoder_2 | vae
    params: int
    stored_bytes: int           # as the files hold them (their dtypes)
    fp8_params: int = 0         # Linear/conv weights and biases that store_in_fp8 keeps in 1 byte
    bnb_params: int = 0         # in 2-D Linear weights: what bitsandbytes int8 / nf4 quantizes
    bnb_rows: int = 0           # their output rows (int8 keeps an fp32 scale per row)
    blocks: tuple = ()          # (params, fp8_params, bnb_params) of each transformer block, in run order
    doubles: int = 0            # how many of the blocks come first as double-stream blocks (FLUX)
    linears: tuple = ()         # (diffusers module name, in, out) of every Linear, for LoRA counts
    hidden: int = 0             # the width: FLUX's transformer, a text encoder's states
    guidance: bool = False      # has a guidance embedding (FLUX dev; schnell has none)
    source: str = ""            # the files read, or "known size of ..."
    dtype: str = ""             # the files' dtype of most parameters (BF16, F8_E4M3, ...); "" for known sizes
    block_kinds: tuple = ()     # each block's kind (BlockLayout.kind_name), in run order
    # each block's tensors as the model holds them (a fused file tensor split into its diffusers parts), in run
    # order: ((numel, in_fp8, in_bnb), ...) per block, for block swap's pinned copies
    block_tensors: tuple = ()

    @property
    def known(self) -> bool:
        return self.source.startswith("known")


def read_header(file: Path) -> Tensors:
    """{name: (shape, dtype)} of a .safetensors file, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(file), "np") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def component_from_tensors(name: str, tensors: Tensors, source: str, layout: BlockLayout = NO_BLOCKS) -> Component:
    """Count a component's tensors by what fp8, bitsandbytes, LoRA and block swap do with them; `layout`: how the
    family's files name the denoiser's blocks (its FamilyMemory.layout; the default knows no blocks)."""
    params = stored = fp8 = bnb = rows = 0
    blocks: dict[tuple, list] = {}
    kinds: dict[tuple, str] = {}
    parts: dict[tuple, list] = {}
    linears, by_dtype = [], {}
    renamed = any((m := layout.match(k)) and m[1] in layout.renamed_kinds for k in tensors) or \
        any(mark in k for k in tensors for mark in layout.renamed_marks)
    hidden = next((s[0] for k, (s, _) in tensors.items() if k.endswith(layout.width_keys)),
                  next((s[1] for k, (s, _) in tensors.items() if k.endswith(_EMBEDDING_KEYS) and len(s) == 2), 0))
    for key, (shape, dtype) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        params += n
        stored += n * DTYPE_BYTES.get(dtype, 2)
        by_dtype[dtype] = by_dtype.get(dtype, 0) + n
        weight = key.endswith(".weight") and len(shape) >= 2
        of_weight = key.endswith(".bias") and len(tensors.get(key[:-5] + ".weight", ((),))[0]) >= 2
        in_fp8 = n if (weight or of_weight) and not _kept_out_of_fp8(key, layout, renamed) else 0
        in_bnb = n if key.endswith(".weight") and len(shape) == 2 else 0
        fp8, bnb, rows = fp8 + in_fp8, bnb + in_bnb, rows + (shape[0] if in_bnb else 0)
        match = layout.match(key)
        if match:
            place = (layout.rank(match[1]), int(match[2]))
            counts = blocks.setdefault(place, [0, 0, 0])
            counts[0], counts[1], counts[2] = counts[0] + n, counts[1] + in_fp8, counts[2] + in_bnb
            kinds[place] = layout.kind_name(match[1])
            parts.setdefault(place, []).extend(
                (numel, bool(in_fp8), bool(in_bnb)) for numel in _model_numels(key, shape, hidden, layout, renamed))
        if in_bnb:
            module = key.removeprefix("model.diffusion_model.").removesuffix(".weight")
            linears += _renamed_linears(key, shape, hidden, layout) if renamed else [(module, shape[1], shape[0])]
    order = sorted(blocks)
    return Component(name, params, stored, fp8, bnb, rows, tuple(tuple(blocks[k]) for k in order),
                     sum(1 for k in order if kinds[k] in layout.double_kinds), tuple(linears), hidden,
                     any(g in k for k in tensors for g in layout.guidance_keys), source,
                     max(by_dtype, key=by_dtype.get, default=""), tuple(kinds[k] for k in order),
                     tuple(tuple(parts[k]) for k in order))


def _model_numels(key: str, shape: tuple, hidden: int, layout: BlockLayout, renamed: bool) -> list[int]:
    """The element counts of the model's tensors that a block's file tensor becomes: a fused weight or bias of a
    file in the other naming splits into its parts (layout.rename; every part but the last has `hidden` rows)."""
    n = 1
    for d in shape:
        n *= d
    if not renamed or not shape or not key.endswith((".weight", ".bias")):
        return [n]
    count = len(layout.rename(key.rsplit(".", 1)[0]))
    if count == 1:
        return [n]
    per_row = n // shape[0]
    return [hidden * per_row] * (count - 1) + [(shape[0] - hidden * (count - 1)) * per_row]


def _renamed_linears(name: str, shape: tuple, hidden: int, layout: BlockLayout) -> list[tuple[str, int, int]]:
    """A block linear of a file in the family's other naming as the diffusers linears it holds (layout.rename; of a
    fused one, every part but the last has `hidden` rows): [(name, in, out)]. Outside the blocks: none (LoRA's
    targets are all inside them)."""
    if not layout.match(name):
        return []
    parts = layout.rename(name.removesuffix(".weight"))
    rows = [hidden] * (len(parts) - 1) + [shape[0] - hidden * (len(parts) - 1)]
    return [(part, shape[1], out) for part, out in zip(parts, rows)]


def _kept_out_of_fp8(key: str, layout: BlockLayout, renamed: bool) -> bool:
    """True for a layer store_in_fp8 leaves in the compute dtype (engine/models/base_storage.py's patterns)."""
    module = key.removeprefix("model.diffusion_model.").rsplit(".", 1)[0]
    if renamed and not layout.match(module + "."):
        module = next(iter(layout.rename(module)), module)  # the diffusers name FP8_SKIP_PATTERNS is written in
    return not layout.match(module + ".") and any(re.search(p, module) for p in FP8_SKIP_PATTERNS)
