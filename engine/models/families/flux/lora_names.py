"""FLUX.1 LoRA modules under Black Forest Labs' names, as sd-scripts (networks/lora_flux.py) writes them and ComfyUI /
Forge and diffusers read them: `lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_0_linear1`, ...

BFL's checkpoint fuses layers that diffusers keeps apart: a double block's image q, k, v (`img_attn.qkv`), its text
q, k, v (`txt_attn.qkv`), and a single block's q, k, v and MLP input (`linear1`). Every loader applies one weight
change per file module, alpha / rank * up @ down with rank = the down's rows: ComfyUI on the fused weight, diffusers
(_convert_kohya_flux_lora_to_diffusers) split over its own layers. So a fused module is written as sd-scripts'
split_qkv option writes it, exact for any loader:

    down = [A_q; A_k; A_v]              (n*r, in)     the parts' downs stacked
    up   = blockdiag(B_q, B_k, B_v)     (sum out, n*r) a part's up sees only its own down rows
    alpha = n * r * (the parts' alpha / r)            so alpha / (n*r) is the parts' scale

A part the run did not train is a zero block. (sd-scripts keeps the parts' alpha there, which makes its own split_qkv
files load at 1/n strength: kohya-ss/sd-scripts issue #2204.) sd-scripts' default, one shared down (r, in) with a
tall up (sum out, r), reads back too: every part gets the shared down and its rows of up.
"""
from __future__ import annotations

import re

import torch

from engine.models.families.flux.bfl_names import bfl_module_of

# sd-scripts' prefixes for FLUX.1 (LoRANetwork.LORA_PREFIX_*): the transformer, CLIP-L, T5-XXL (lora_te2 in its
# first FLUX versions; ComfyUI reads both).
PREFIXES = {"transformer": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te3"}

# What sd-scripts writes in a FLUX.1 LoRA's header (library/flux_utils.py MODEL_VERSION_FLUX_V1,
# library/sai_model_spec.py; flux_train_network.py picks dev or schnell from the checkpoint). It writes no
# modelspec.prediction_type for FLUX.
BASE_MODEL_VERSION = "flux1"
ARCHITECTURE = {"dev": "flux-1-dev/lora", "schnell": "flux-1-schnell/lora"}
IMPLEMENTATION = "https://github.com/black-forest-labs/flux"
NETWORK_MODULE = "networks.lora_flux"

# The modules a FLUX LoRA may name (the diffusers <-> BFL map itself is engine/models/families/flux/bfl_names.py): the blocks'
# linears, and the embedders, which sd-scripts trains with its in_dims option: read back, never written, because
# diffusers 0.42's converter drops them (it files them without the `transformer.` prefix).
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.")
_TOP = ("x_embedder", "context_embedder", "time_text_embed.")
_FUSED_SIZE = {"qkv": 3, "linear1": 4}
# diffusers 0.42's converter splits single-block linear1 at FLUX.1's widths, written into its code (q, k, v, MLP).
DIFFUSERS_LINEAR1_WIDTHS = (3072, 3072, 3072, 12288)


def is_flux_transformer(module) -> bool:
    """FLUX.1's transformer (and Chroma's, a trimmed FLUX.1); not FLUX.2's, whose blocks share their modulation
    (double_stream_modulation_img) and whose names are its own (families/flux2/lora_names.py)."""
    return module is not None and hasattr(module, "single_transformer_blocks") and \
        hasattr(module, "transformer_blocks") and not hasattr(module, "double_stream_modulation_img")


def bfl_module(path: str) -> tuple[str, int | None] | None:
    """(BFL module, slot) of a FluxTransformer2DModel module path with a BFL LoRA name: `transformer_blocks.0.attn.to_k`
    -> (`double_blocks.0.img_attn.qkv`, 1); None for other modules (norms, the final layer)."""
    if not (_BLOCK.match(path) or path.startswith(_TOP)) or ".norm_" in path:
        return None
    return bfl_module_of(path)


def _is_top(path: str) -> bool:
    return path.startswith(_TOP)


def kohya_name(bfl: str) -> str:
    return PREFIXES["transformer"] + "_" + bfl.replace(".", "_")


def fused_size(kohya: str) -> int:
    """How many diffusers layers one file module stands for: 3 (a qkv), 4 (single linear1) or 1."""
    m = re.match(r"^lora_unet_(double_blocks_\d+_(img|txt)_attn_(qkv)|single_blocks_\d+_(linear1))$", kohya)
    return _FUSED_SIZE[m[3] or m[4]] if m else 1


def modules(transformer) -> dict[str, list[str]]:
    """{kohya module name: the transformer's module paths it holds, in the fused layer's order (one if not fused)}."""
    return modules_by(transformer, bfl_module)


def modules_by(transformer, bfl_module_of_path) -> dict[str, list[str]]:
    """modules() under another family's (BFL module, slot) function (FLUX.2's, flux2/lora_names.py)."""
    found: dict[str, dict[int, str]] = {}
    for path, _ in transformer.named_modules():
        bfl = bfl_module_of_path(path)
        if bfl is not None:
            found.setdefault(kohya_name(bfl[0]), {})[bfl[1] or 0] = path
    return {name: [slots[i] for i in sorted(slots)] for name, slots in found.items()}


def out_features(transformer, path: str) -> int:
    return transformer.get_submodule(path).out_features  # nn.Linear and peft's LoRA layers both have it


# ---------------------------------------------------------------------------------------------- writing

def tensors(transformer, layers: dict, adapter_name: str) -> dict[str, torch.Tensor]:
    """The kohya tensors of `layers` ({module path: peft LoRA layer}, all of the transformer's) under BFL names.

    Raises ValueError naming a LoRA layer outside the blocks: diffusers would not load it (see _TOP).
    """
    unreadable = sorted(p for p in layers if bfl_module(p) is None or _is_top(p))
    if unreadable:
        raise ValueError(f"export.format: 'kohya' FLUX files hold the blocks' layers only (diffusers drops the "
                         f"others): {', '.join(unreadable)}; leave them out of network.targets or use format "
                         f"'diffusers'")
    return write_modules(transformer, modules(transformer), layers, adapter_name)


def write_modules(transformer, names: dict[str, list[str]], layers: dict, adapter_name: str) -> dict:
    """The kohya tensors of `layers` ({module path: peft LoRA layer}) under the file module names `names` ({name: the
    module paths it holds, as modules() gives them}): down, up and alpha each, a fused one as the docstring says."""
    out = {}
    for name, paths in names.items():
        present = [p for p in paths if p in layers]
        if not present:
            continue
        if len(paths) == 1:
            layer = layers[paths[0]]
            down, up = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            scale = layer.scaling[adapter_name]
        else:
            down, up, scale = fuse(transformer, paths, layers, adapter_name)
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        # kohya's scale is alpha / rank (rank: the down's rows), so alpha = scale * rank (also right for rsLoRA)
        out[f"{name}.alpha"] = torch.tensor(scale * down.shape[0])
    return out


def fuse(transformer, paths: list[str], layers: dict, adapter_name: str):
    """(down [n*r, in], block-diagonal up [sum out, n*r], scale) of one fused module's parts (module docstring)."""
    first = layers[next(p for p in paths if p in layers)]
    rank, scale = max(layers[p].r[adapter_name] for p in paths if p in layers), first.scaling[adapter_name]
    weight = first.lora_A[adapter_name].weight
    downs, ups = [], []
    for path in paths:
        down = torch.zeros(rank, weight.shape[1], dtype=weight.dtype, device=weight.device)
        up = torch.zeros(out_features(transformer, path), rank, dtype=weight.dtype, device=weight.device)
        if path in layers:  # a part of lower rank is zero-padded; a part of another scale folds it into its up
            a, b = layers[path].lora_A[adapter_name].weight, layers[path].lora_B[adapter_name].weight
            down[:a.shape[0]] = a
            up[:, :b.shape[1]] = b * (layers[path].scaling[adapter_name] / scale)
        downs.append(down)
        ups.append(up)
    return torch.cat(downs), torch.block_diag(*ups), scale


# ---------------------------------------------------------------------------------------------- reading

def out_dims(kohya: str, down: torch.Tensor, up: torch.Tensor) -> list[int]:
    """The widths of a file module's parts along up's rows. A FLUX block's q, k and v are as wide as its input (the
    transformer's width) and linear1's MLP part is the rest, so a file alone tells them apart."""
    n = fused_size(kohya)
    if n == 1:
        return [up.shape[0]]
    width = down.shape[1]
    return [width] * (n - 1) + [up.shape[0] - width * (n - 1)]


def is_block_diagonal(down: torch.Tensor, up: torch.Tensor, widths: list[int]) -> bool:
    """up has n blocks of rank/n columns, part j's rows nonzero only in block j (sd-scripts' split_qkv, Easel)."""
    rank, n = down.shape[0], len(widths)
    if n == 1 or rank % n:
        return False
    r, rows = rank // n, torch.split(up, widths, dim=0)
    return all(not rows[j][:, k * r:(k + 1) * r].any() for j in range(n) for k in range(n) if j != k)


def part_rank(kohya: str, down: torch.Tensor, up: torch.Tensor) -> int:
    """The rank an adapter needs to take one part of a file module: rank/n if block-diagonal, else the rank."""
    return part_rank_of(out_dims(kohya, down, up), down, up)


def part_rank_of(widths: list[int], down: torch.Tensor, up: torch.Tensor) -> int:
    """part_rank() of a module whose parts have these widths."""
    return down.shape[0] // len(widths) if is_block_diagonal(down, up, widths) else down.shape[0]


def split(kohya: str, down: torch.Tensor, up: torch.Tensor, part_ranks: list[int | None]) -> list:
    """Each part's (lora_A, lora_B) of a file module, for adapters of `part_ranks` (None: that part has no adapter);
    exact. A part whose adapter has the file's rank takes the whole down and its rows of up (the dense layout, also
    right for a block-diagonal up); one of rank/n takes its own block (the block-diagonal layout). A part that
    cannot take the file's weights is None."""
    return split_widths(out_dims(kohya, down, up), down, up, part_ranks)


def split_widths(widths: list[int], down: torch.Tensor, up: torch.Tensor, part_ranks: list[int | None]) -> list:
    """split() of a module whose parts have these widths."""
    rank, rows = down.shape[0], torch.split(up, widths, dim=0)
    block_diagonal = is_block_diagonal(down, up, widths)
    parts = []
    for j, wanted in enumerate(part_ranks):
        if wanted == rank:
            parts.append((down, rows[j]))
        elif block_diagonal and wanted == rank // len(widths):
            cols = slice(j * wanted, (j + 1) * wanted)
            parts.append((down[cols], rows[j][:, cols]))
        else:
            parts.append(None)
    return parts


def unplaced(tensors: dict, transformer) -> list[str]:
    """The file modules in `tensors` (kohya keys, BFL names) that no layer of `transformer` can take as they are:
    no such module, or shapes that do not fit the layers it names."""
    return unplaced_in(tensors, transformer, modules(transformer), out_dims)


def unplaced_in(tensors: dict, transformer, names: dict[str, list[str]], widths_of) -> list[str]:
    """unplaced() under the file module names `names` (as modules() gives them), whose parts' widths
    widths_of(stem, down, up) reads from the file."""
    bad = []
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        stem = key.removesuffix(".lora_down.weight")
        paths, up = names.get(stem), tensors.get(f"{stem}.lora_up.weight")
        widths = [out_features(transformer, p) for p in paths or []]
        if (not paths or up is None or down.shape[1] != transformer.get_submodule(paths[0]).in_features
                or tuple(up.shape) != (sum(widths), down.shape[0]) or widths_of(stem, down, up) != widths):
            bad.append(stem)
    return sorted(bad)


# ---------------------------------------------------------------------------------------------- the shared code's hooks

_BFL_STEM = re.compile(r"^lora_unet_(double_blocks|single_blocks|img_in|txt_in|time_in|vector_in|guidance_in)_")


def claims(stem: str) -> str | None:
    """"transformer" for a kohya stem under BFL names (sd-scripts says lora_unet for any denoiser), else None."""
    return "transformer" if _BFL_STEM.match(stem) else None


def shape_checked(stems: list[str], transformer) -> set[str]:
    """The file modules the self-check must place by shape itself: diffusers 0.42 splits single-block linear1 only
    at FLUX.1's widths, so for a narrower FLUX (the tests' tiny one) those are checked against the layers' shapes
    and the rest goes through diffusers."""
    if not len(transformer.single_transformer_blocks):
        return set()
    block = transformer.single_transformer_blocks[0]
    widths = tuple(m.out_features for m in (block.attn.to_q, block.attn.to_k, block.attn.to_v, block.proj_mlp))
    if widths == DIFFUSERS_LINEAR1_WIDTHS:
        return set()
    return {s for s in stems if fused_size(s) == 4}


def shape_check_note(count: int) -> str:
    return (f"{count} single-block linear1 modules checked by shape: diffusers reads them only at FLUX.1's widths "
            f"{DIFFUSERS_LINEAR1_WIDTHS}")
