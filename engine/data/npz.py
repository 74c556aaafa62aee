"""A dataset of .npz files for the DiT's `conditioning: channels` (shared/seeds/flow-matching-and-diffusion-training.md
"Data Format"): one training sample per file, each file holding named 2-D [H, W] or 3-D [C, H, W] arrays of one
height and width.

    npz_files(root) -> [Path]                         the dataset's .npz files, sorted by name
    parse_aliases(["robot=robot_image"]) -> {old: new} model.dit.array_aliases
    array_channels(path, names, aliases) -> [int]      how many channels each named array has (header only)
    load_arrays(path, spec) -> (target [Ct, H, W], context [Cc (+2), H, W])   float32, values as stored

Values are used as stored, not normalised (the guide's masks are 0/1; the flow's noise is N(0, 1), so a target in
about [-1, 1] or [0, 1] trains as an image does). `spec` is the DiT's settings: target_array, context_arrays,
coordinate_grid, array_aliases.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# torch is imported inside the functions that build tensors: the dry run and the GUI's LR plot read the headers only
if TYPE_CHECKING:
    import torch


def npz_files(root: Path) -> list[Path]:
    root = Path(root)
    return sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".npz"),
                  key=lambda p: p.name.lower()) if root.is_dir() else []


def parse_aliases(entries) -> dict[str, str]:
    """{"robot": "robot_image"} from ["robot=robot_image"]; a malformed entry is a UserError."""
    from engine.failures import UserError

    out = {}
    for entry in entries:
        old, sep, new = str(entry).partition("=")
        if not sep or not old.strip() or not new.strip():
            raise UserError(f"model.dit.array_aliases: {entry!r} is not old=new.",
                            "Write each legacy key as old=new, e.g. robot=robot_image.")
        out[old.strip()] = new.strip()
    return out


def _renamed(keys, aliases: dict[str, str]) -> dict[str, str]:
    """{name the preset uses: key in the file}: a legacy key answers to its new name unless the file has both."""
    names = {k: k for k in keys}
    for old, new in aliases.items():
        if old in names and new not in names:
            names[new] = old
    return names


def _as_chw(array: np.ndarray, path: Path, name: str) -> np.ndarray:
    from engine.failures import UserError

    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array
    raise UserError(f"{path}: array {name!r} has shape {tuple(array.shape)}; only 2-D [H, W] or 3-D [C, H, W] "
                    f"arrays can be channels.", "Save each array as [H, W] or [C, H, W].")


def _open(path: Path, names: list[str], aliases: dict[str, str]):
    """(the open NpzFile, {name: key in the file}); a missing name is a UserError naming the file and the key."""
    from engine.failures import UserError

    data = np.load(path, allow_pickle=False)
    keys = _renamed(data.files, aliases)
    for name in names:
        if name not in keys:
            legacy = [old for old, new in aliases.items() if new == name]
            also = f" (or its legacy name {', '.join(legacy)})" if legacy else ""
            data.close()
            raise UserError(f"{path}: has no array {name!r}{also}; it has {', '.join(sorted(data.files)) or 'none'}.",
                            "Fix model.dit.target_array / model.dit.context_arrays, or add the old name to "
                            "model.dit.array_aliases as old=new.")
    return data, keys


def array_channels(path: Path, names: list[str], aliases: dict[str, str]) -> list[int]:
    data, keys = _open(path, names, aliases)
    with data:
        return [_as_chw(data[keys[n]], path, n).shape[0] for n in names]


def array_size(path: Path, name: str, aliases: dict[str, str]) -> tuple[int, int]:
    """(width, height) of one named array."""
    data, keys = _open(path, [name], aliases)
    with data:
        shape = _as_chw(data[keys[name]], path, name).shape
    return shape[2], shape[1]


def coordinate_grid(height: int, width: int) -> torch.Tensor:
    """[2, H, W]: channel 0 the row (y), channel 1 the column (x), each from -1 to 1 across the image."""
    import torch

    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([y, x])


def load_arrays(path: Path, spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(target [Ct, H, W], context [Cc, H, W]) float32 for one file: the context arrays in the preset's order, then
    the (y, x) grid when coordinate_grid is on. Arrays of different sizes are a UserError."""
    import torch

    from engine.failures import UserError

    names = [spec["target_array"], *spec["context_arrays"]]
    aliases = parse_aliases(spec.get("array_aliases", []))
    data, keys = _open(Path(path), names, aliases)
    with data:
        arrays = [_as_chw(np.asarray(data[keys[n]], dtype=np.float32), path, n) for n in names]
    sizes = {n: a.shape[1:] for n, a in zip(names, arrays)}
    if len(set(sizes.values())) > 1:
        raise UserError(f"{path}: its arrays differ in size: " + ", ".join(f"{n} {s[0]}x{s[1]}" for n, s in
                                                                            sizes.items()) + ".",
                        "Every array of a sample must have the same height and width.")
    target = torch.from_numpy(arrays[0].copy())
    parts = [torch.from_numpy(a.copy()) for a in arrays[1:]]
    if spec["coordinate_grid"]:
        parts.append(coordinate_grid(*target.shape[1:]))
    context = torch.cat(parts) if parts else torch.zeros(0, *target.shape[1:])
    return target, context


SAMPLE_FILES = 4  # how many files' contexts the samples during training show (the first validation files first)


def collect_npz_samples(dataset, spec: dict) -> list:
    """One Sample per .npz file of dataset.path (its bucket the target's own width x height; no caption). Every
    file is checked for the named arrays here, so a missing one stops the run before any training."""
    from engine.data.samples import Sample
    from engine.failures import UserError

    root = Path(dataset.path).expanduser()
    files = npz_files(root) if dataset.path else []
    if not files:
        raise UserError(f"dataset.path: no .npz files in {root if dataset.path else '(empty)'} (model.dit."
                        f"conditioning: channels trains on one .npz file per sample).",
                        "Point dataset.path at the folder of .npz files (each with the target and context arrays).")
    aliases = parse_aliases(spec.get("array_aliases", []))
    names = [spec["target_array"], *spec["context_arrays"]]
    samples = []
    for path in files:
        data, _ = _open(path, names, aliases)
        data.close()
        size = array_size(path, spec["target_array"], aliases)
        samples.append(Sample(path, "", size, size, dataset.repeats, 1.0))
    return samples


class ArraySource:
    """The BatchSource of conditioning channels: {"latents": the target [B, Ct, H, W], "cond": {"class_labels",
    "context" [B, Cc, H, W]}, ...} read from the .npz files each batch (nothing to encode, nothing cached)."""

    latents = None      # no VAE cache to keep the VAE busy (placement.idle_parts)
    text_cache = None

    def __init__(self, samples, spec: dict, device="cpu"):
        import torch

        self.samples, self.spec, self.device = samples, spec, device
        self.val_indices: list = []
        self.encode_text = lambda captions: {"class_labels": torch.zeros(len(captions), dtype=torch.long)}
        self.text_cache_dir, self.encoder_id = None, ""

    def __call__(self, indices: list[int], epoch: int, batch_index: int, fixed: bool = False) -> dict:
        import torch

        samples = [self.samples[i] for i in indices]
        pairs = [load_arrays(s.image, self.spec) for s in samples]
        target = torch.stack([p[0] for p in pairs])
        context = torch.stack([p[1] for p in pairs])
        h, w = target.shape[-2:]
        return {"latents": target.to(self.device), "size_cond": torch.tensor([[h, w, 0, 0, h, w]] * len(samples),
                                                                             dtype=torch.float32),
                "cond": {"class_labels": torch.zeros(len(samples), dtype=torch.long, device=self.device),
                         "context": context.to(self.device)},
                "loss_weight": torch.tensor([s.loss_weight for s in samples], device=self.device),
                "files": [str(s.image) for s in samples], "captions": [s.caption for s in samples]}


def prepare_npz_batches(dataset, training, comps, device, validation=None):
    """(training samples, ArraySource) for conditioning channels; the DiT's channel counts fitted to the first
    file, and comps.extra["sample_cond"] (context + ground truth of the first SAMPLE_FILES validation files, then
    training files) for the samples."""
    import torch

    from engine.data.samples import split_validation
    from engine.failures import UserError

    spec = comps.extra["dit_settings"]
    if validation is not None and validation.folder:
        raise UserError("validation.folder: model.dit.conditioning channels holds out part of its .npz files "
                        "(validation.fraction), not a folder.", "Leave validation.folder empty and set "
                        "validation.fraction (0.1 is usual).")
    samples = collect_npz_samples(dataset, spec)
    held = []
    if validation is not None:
        samples, held = split_validation(samples, dataset, validation, lambda message: None)
    patch = comps.denoiser.config.patch_size
    odd = [s for s in samples + held if s.size[0] % patch or s.size[1] % patch]
    if odd:
        raise UserError(f"{odd[0].image}: its arrays are {odd[0].size[0]}x{odd[0].size[1]}, not a multiple of "
                        f"model.dit.patch_size ({patch}) on each side.",
                        f"Use a patch_size that divides the arrays' sides (e.g. {math.gcd(*odd[0].size, 64)}), or "
                        f"save the arrays at such a size.")
    target, context = load_arrays(samples[0].image, spec)
    comps.extra["fit_channels"](target.shape[0], context.shape[0])
    every = samples + held
    source = ArraySource(every, spec, device)
    source.val_indices = list(range(len(samples), len(every)))
    shown = [load_arrays(s.image, spec) for s in (held + samples)[:SAMPLE_FILES]]
    comps.extra["sample_cond"] = {"truth": torch.stack([p[0] for p in shown]),
                                  "context": torch.stack([p[1] for p in shown])}
    comps.extra["sample_files"] = [str(s.image) for s in (held + samples)[:SAMPLE_FILES]]
    return samples, source
