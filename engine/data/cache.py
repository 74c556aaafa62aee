"""Latent and text-embedding caches, and the batch source that feeds the loop from them.

Latents are cached on disk under the dataset's `_easel/cache/latents/` (Easel's own folder, never trained on),
one safetensors file per (file content, bucket, crop, VAE): editing an image, changing the resolution or the VAE
gives a new key, and a second run on the same data skips the VAE entirely. Text embeddings are cached per caption
string while no text encoder trains (an encoder that trains changes them every step), on disk under
`_easel/cache/text/` keyed by (caption, text encoders, their settings): FLUX's T5 takes seconds per caption on a
small GPU and most of its VRAM, so a second run on the same captions never loads it onto the GPU.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from engine.atomic import atomic_save_file
from engine.data.samples import Sample, caption_for_step, crop_box, load_pixels, step_generator

CACHE_FORMAT = "1"  # bump when what is stored changes, so old files are not reused


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def module_fingerprint(*modules) -> str:
    """Identifies models' weights cheaply: their configs plus a few statistics of every tensor (a full sum only of
    the small ones, so a 4.7B-parameter T5 is fingerprinted in well under a second)."""
    h = hashlib.sha256()
    for module in modules:
        config = getattr(module, "config", {})
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        h.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
        for name, p in module.state_dict().items():
            flat = p.detach().flatten()
            sample = flat[:4].float().tolist() + flat[-4:].float().tolist() + flat[flat.numel() // 2:][:4].float().tolist()
            total = f"{flat.float().sum().item():.6e}" if flat.numel() <= 1 << 20 else ""
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{total}:{sample}".encode("utf-8"))
    return h.hexdigest()[:16]




def latent_key(sample: Sample, digest: str, vae_id: str) -> str:
    crop = crop_box(sample.size, sample.bucket, random_crop=False, g=None)
    text = f"{CACHE_FORMAT}|{digest}|{sample.bucket}|{crop}|{vae_id}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def cache_dir_for(dataset_path: str, kind: str = "latents") -> Path:
    return Path(dataset_path).expanduser() / "_easel" / "cache" / kind


def _load_or_encode(sample: Sample, path: Path, encode_image, writable: bool = True):
    from safetensors.torch import load_file

    if path.is_file():
        try:
            data = load_file(path)
            return data["latents"], data["size_cond"]
        except Exception:  # noqa: BLE001 - a torn cache file is simply rebuilt
            pass
    pixels, size_cond = load_pixels(sample.image, sample.size, sample.bucket)
    with torch.no_grad():
        latents = encode_image(pixels[None])[0].float().cpu()
    if not writable:
        return latents, size_cond
    try:
        atomic_save_file({"latents": latents.contiguous(), "size_cond": size_cond}, path)
    except OSError as e:  # a read-only dataset folder or a full disk: train from memory, cache nothing
        raise CacheNotWritable(str(e)) from e
    return latents, size_cond


class CacheNotWritable(OSError):
    pass


def cache_latents(samples: list[Sample], encode_image, cache_dir: Path, vae_id: str, status, warn):
    """{sample index: (latents [C, h, w], size_cond [6])} for every readable sample; unreadable ones are warned
    about and left out. `status(n, total)` reports progress."""
    out, writable = {}, True
    for i, sample in enumerate(samples):
        status(i, len(samples))
        try:
            key = latent_key(sample, file_digest(sample.image), vae_id)
            out[i] = _load_or_encode(sample, cache_dir / f"{key}.safetensors", encode_image, writable)
        except CacheNotWritable as e:
            warn(f"The latent cache folder {cache_dir} cannot be written ({e}); latents are kept in memory only "
                 f"and encoded again next run.")
            writable = False
            out[i] = _load_or_encode(sample, cache_dir / f"{key}.safetensors", encode_image, writable)
        except Exception as e:  # noqa: BLE001
            warn(f"Skipped {sample.image}: it cannot be decoded ({type(e).__name__}: {e}).")
    status(len(samples), len(samples))
    return out


def check_readable(samples: list[Sample], status, warn) -> set[int]:
    """Indices of the samples whose pixels decode (used when latents are not cached)."""
    ok = set()
    for i, sample in enumerate(samples):
        status(i, len(samples))
        try:
            load_pixels(sample.image, sample.size, sample.bucket)
            ok.add(i)
        except Exception as e:  # noqa: BLE001
            warn(f"Skipped {sample.image}: it cannot be decoded ({type(e).__name__}: {e}).")
    status(len(samples), len(samples))
    return ok


@torch.no_grad()
def cache_text(captions: list[str], encode_text, status, chunk: int = 16, cache_dir: Path | None = None,
               encoder_id: str = "", warn=None) -> dict[str, dict]:
    """{caption: cond with the batch dim removed} for each distinct caption; with cache_dir, read from and written
    to one file per (encoder_id, caption)."""
    unique = sorted(set(captions))
    out: dict[str, dict] = {}
    todo = []
    for caption in unique:
        found = _read_text_file(cache_dir, encoder_id, caption) if cache_dir else None
        if found is None:
            todo.append(caption)
        else:
            out[caption] = found
    for start in range(0, len(todo), chunk):
        status(len(out), len(unique))
        part = todo[start:start + chunk]
        cond = encode_text(part)
        for j, caption in enumerate(part):  # kept in CPU RAM (FLUX: 4 MB per caption), copied per batch
            out[caption] = {k: v[j].detach().cpu() for k, v in cond.items()}
            if cache_dir is not None:
                cache_dir = _write_text_file(cache_dir, encoder_id, caption, out[caption], warn)
    status(len(unique), len(unique))
    return out


def _text_file(cache_dir: Path, encoder_id: str, caption: str) -> Path:
    key = hashlib.sha256(f"{CACHE_FORMAT}|{encoder_id}|{caption}".encode("utf-8")).hexdigest()[:32]
    return cache_dir / f"{key}.safetensors"


def _read_text_file(cache_dir: Path, encoder_id: str, caption: str) -> dict | None:
    from safetensors.torch import load_file

    path = _text_file(cache_dir, encoder_id, caption)
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception:  # noqa: BLE001 - a torn cache file is simply encoded again
        return None


def _write_text_file(cache_dir: Path, encoder_id: str, caption: str, cond: dict, warn) -> Path | None:
    """Write one caption's embeddings; on a read-only or full disk, warn once and keep them in memory only."""
    try:
        atomic_save_file({k: v.contiguous().cpu() for k, v in cond.items()}, _text_file(cache_dir, encoder_id, caption))
        return cache_dir
    except OSError as e:
        if warn:
            warn(f"The text cache folder {cache_dir} cannot be written ({e}); the caption embeddings are kept in "
                 f"memory only and encoded again next run.")
        return None


class BatchSource:
    """Builds one batch dict from sample indices: latents, text cond, size_cond, loss weights, file names.

    Uses the latent cache when there is one (else loads and encodes the pixels), and the text cache when the
    caption is in it (else encodes it: the text encoder trains, or tag shuffle made a new caption).
    """

    def __init__(self, samples, dataset, seed, encode_image, encode_text, latents=None, text_cache=None,
                 device="cpu"):
        self.samples, self.dataset, self.seed = samples, dataset, seed
        self.encode_image, self.encode_text = encode_image, encode_text
        self.latents, self.text_cache, self.device = latents, text_cache, device

    val_indices: list = []

    def __call__(self, indices: list[int], epoch: int, batch_index: int, fixed: bool = False) -> dict:
        """The batch of `indices`; fixed (validation): the captions as written and the centre crop, no flip,
        no dropout or shuffle, so the same batch is the same every time."""
        g = step_generator(self.seed, epoch, batch_index)
        samples = [self.samples[i] for i in indices]
        captions = [s.caption if fixed else caption_for_step(s, self.dataset, g) for s in samples]
        latents, size_cond = self._latents(indices, samples, g, fixed)
        return {"latents": latents.to(self.device, non_blocking=True), "size_cond": size_cond.to(self.device),
                "cond": self._cond(captions),
                "loss_weight": torch.tensor([s.loss_weight for s in samples], device=self.device),
                "files": [str(s.image) for s in samples], "captions": captions}

    def _latents(self, indices, samples, g, fixed: bool = False):
        if self.latents is not None:
            pairs = [self.latents[i] for i in indices]
            return _pinned(torch.stack([p[0] for p in pairs]), self.device), torch.stack([p[1] for p in pairs])
        augment = not fixed
        pairs = [load_pixels(s.image, s.size, s.bucket, augment and self.dataset.random_crop,
                             augment and self.dataset.flip, g) for s in samples]
        with torch.no_grad():
            latents = self.encode_image(torch.stack([p[0] for p in pairs]).to(self.device))
        return latents.float(), torch.stack([p[1] for p in pairs])

    def _cond(self, captions: list[str]) -> dict:
        if self.text_cache is not None and all(c in self.text_cache for c in captions):
            keys = self.text_cache[captions[0]].keys()
            return {k: _pinned(torch.stack([self.text_cache[c][k] for c in captions]), self.device).to(
                self.device, non_blocking=True) for k in keys}
        return self.encode_text(captions)


def _pinned(batch: torch.Tensor, device: str) -> torch.Tensor:
    """A batch stacked from the CPU caches, in page-locked memory when it goes to a GPU: the copy then runs
    without a host sync (non_blocking) while the GPU still works on the previous step."""
    return batch.pin_memory() if device == "cuda" and batch.device.type == "cpu" else batch


def prepare_batches(dataset, training, network, family, comps, device, warn, progress, validation=None):
    """(training samples, BatchSource) with latents and text embeddings cached where the settings allow.

    warn(message) reports skipped files; progress(phase, text) returns the n/total callback of a phase.
    With a validation split, the BatchSource covers the training samples and then the validation ones: its
    `val_indices` are theirs (the training samples' indices are the same in both lists).
    """
    from engine.data.samples import collect_samples, split_validation
    from engine.failures import UserError

    conditioning = comps.extra.get("conditioning")  # the DiT's: none | class | channels (no captions); None: text
    if conditioning == "channels":  # .npz arrays, not images: engine/data/npz.py
        from engine.data.npz import prepare_npz_batches

        return prepare_npz_batches(dataset, training, comps, device, validation)
    samples = collect_samples(dataset, warn, by_class=conditioning == "class", captions=conditioning is None)
    if conditioning == "class" and not comps.extra.get("class_names"):  # a new DiT: one class per sub-folder
        comps.extra["class_names"] = sorted({s.caption for s in samples})
    held = []
    if validation is not None:
        samples, held = split_validation(samples, dataset, validation, warn)
    held_ids = {id(s) for s in held}
    samples = samples + held
    encode_image = no_grad(on_device_first([comps.vae], device, lambda px: family.encode_image(comps, px)))
    fresh_crops = dataset.random_crop or dataset.flip
    if training.cache_latents and not fresh_crops:
        found = cache_latents(samples, encode_image, cache_dir_for(dataset.path), module_fingerprint(comps.vae),
                              progress("caching", "Caching latents"), warn)
        samples, latents = reindex(samples, found)
    else:
        if training.cache_latents:
            warn("Latents are encoded every step (not cached) because dataset.random_crop or dataset.flip is on.")
        samples, latents = reindex(samples, check_readable(samples, progress("checking", "Checking images"), warn))
        latents = None
    if not samples:
        raise UserError(f"dataset.path: none of the images in {dataset.path} could be read.",
                        "Check that the files are real JPEG/PNG/WebP images (open one in an image viewer).")
    encode_text = on_device_first(list(comps.text_encoders), device,
                                  lambda captions: family.encode_text(comps, captions))
    text_cache, encoder_id = None, ""
    # no text encoders (the DiT's class labels): nothing worth caching, and a cache keyed by caption alone could
    # give one class name another dataset's index
    if training.cache_text_embeddings and not network.train_text_encoder and not dataset.shuffle_tags and \
            comps.text_encoders:
        captions = [s.caption for s in samples] + ([""] if dataset.caption_dropout > 0 else [])
        encoder_id = f"{family.name}|{comps.extra.get('max_sequence_length', '')}|" + \
            module_fingerprint(*comps.text_encoders)
        text_cache = cache_text(captions, encode_text, progress("caching", "Caching text embeddings"),
                                cache_dir=cache_dir_for(dataset.path, "text"), encoder_id=encoder_id, warn=warn)
    if not network.train_text_encoder:
        encode_text = no_grad(encode_text)
    source = BatchSource(samples, dataset, training.seed, encode_image, encode_text, latents, text_cache, device)
    source.text_cache_dir, source.encoder_id = cache_dir_for(dataset.path, "text"), encoder_id  # for sample prompts
    source.val_indices = [i for i, s in enumerate(samples) if id(s) in held_ids]
    train = [s for s in samples if id(s) not in held_ids]
    if not train:
        raise UserError(f"dataset.path: none of the training images in {dataset.path} could be read.",
                        "Check that the files are real JPEG/PNG/WebP images (open one in an image viewer).")
    return train, source


def on_device_first(modules: list, device: str, fn):
    """fn, with `modules` moved to the device the first time it is called: a run whose caches are all on disk never
    brings the VAE or the text encoders (FLUX's T5: 9.5 GB) onto the GPU at all."""
    moved = []

    def wrapped(*args):
        if not moved:
            for module in modules:
                module.to(device)
            moved.append(True)
        return fn(*args)
    return wrapped


def reindex(samples, found):
    """Drop unreadable samples; `found` is {old index: value} or a set of old indices."""
    keep = sorted(found)
    values = {new: found[old] for new, old in enumerate(keep)} if isinstance(found, dict) else None
    return [samples[i] for i in keep], values


def no_grad(fn):
    def wrapped(*args):
        with torch.no_grad():
            return fn(*args)
    return wrapped


def text_only_source(dataset, seed: int, family, comps, device: str) -> BatchSource:
    """A BatchSource with no images, only the text encoder (RL from the first step on a prompts file: no dataset
    to train on, prompts to encode)."""
    encode_text = no_grad(on_device_first(list(comps.text_encoders), device,
                                          lambda captions: family.encode_text(comps, captions)))
    source = BatchSource([], dataset, seed, encode_image=None, encode_text=encode_text, device=device)
    source.text_cache_dir, source.encoder_id = None, ""
    source.val_indices = []
    return source
