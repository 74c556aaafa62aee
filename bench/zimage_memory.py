"""Z-Image memory on the CPU: the figures behind engine/models/families/zimage/memory.py (its activation units, its
encoder's live states) and the parameter memory of a real-width Z-Image in bf16 and in fp8 against fit's estimate.

    python bench/zimage_memory.py                  # (a) activations (b) parameters bf16 / fp8 (c) Qwen3 encoding
    python bench/zimage_memory.py --rss FOLDER [--fp8]   # one fresh process: the RAM of loading FOLDER's
                                                         # transformer (JSON; tests/test_zimage_fit.py runs it)

(a) about 3 minutes and 4 GB of RAM on 2 cores: a Z-Image with the real widths (dim 3840, 30 heads, FFN 10240,
Qwen3 states 2560 wide) but 1 + 1 refiner blocks and 2 main layers, random bf16 weights, peft LoRA rank 16 (fp32)
on the default targets, bf16 autocast, SDPA; 1024 image tokens (512 px) and 128 caption tokens. Per block, the bytes
saved for backward (saved-tensor hooks, each storage counted once); with gradient checkpointing, the inputs each
block keeps; and the peak of every tensor alive through forward and backward (LiveBytes: each aten op's outputs
until they are freed; torch has no allocator statistics on the CPU), against the peak memory.py predicts.
(b) the parameter bytes of a 2-layer real-width Z-Image in bf16 and after engine.models.base_storage.store_in_fp8,
as fit counts them and as the process's resident memory grows (fresh processes, anonymous RSS).
(c) Qwen3 (2560 wide, its real layer) encoding 512 tokens with output_hidden_states, as the family's encode_text
does: the live states per token at 2 and 4 layers, extrapolated to 36.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from engine.models import fit
from engine.models.families.zimage import memory as zm

GB = 2**30
RANK = 16
BLOCK_LISTS = ("noise_refiner", "context_refiner", "layers")   # caps.block_lists, in run order


def zimage(layers: int, refiners: int):
    """ZImageTransformer2DModel with the real widths and random weights, built in bf16 (no fp32 copy on the way)."""
    from diffusers import ZImageTransformer2DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        return ZImageTransformer2DModel(n_layers=layers, n_refiner_layers=refiners)
    finally:
        torch.set_default_dtype(previous)


def add_engine_lora(model, modulation: bool = False) -> list:
    """LoRA as the trainer adds it: Z-Image's default targets inside the blocks, trained weights in fp32."""
    import re

    from engine.models.lora import add_lora

    wanted = zm.ZIMAGE_TARGETS + (zm.MODULATION_TARGETS if modulation else ())
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and (m := re.match(zm.LAYOUT.block.pattern + r"(.+)$", name))
             and m[3] in wanted]
    model.requires_grad_(False)
    params = add_lora(model, RANK, float(RANK), 0.0, names)
    for p in params:
        p.data = p.data.float()
    return params


def tensors_of(model) -> dict:
    """fit's view of a module: {name: (shape, dtype)} of its base weights (LoRA layers left out)."""
    names = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}
    return {k.replace(".base_layer", ""): (tuple(v.shape), names[v.dtype]) for k, v in model.state_dict().items()
            if "lora_" not in k}


def inputs(image_side: int, caption: int) -> tuple:
    """One sample as the transformer takes it: a [16, 1, H, W] latent (H/2 x W/2 tokens) and [caption, 2560] states."""
    latent = torch.randn(16, 1, 2 * image_side, 2 * image_side, dtype=torch.bfloat16)
    return [latent], torch.full((1,), 0.5), [torch.randn(caption, 2560, dtype=torch.bfloat16)]


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages that aten ops create, from their creation until they are freed; `ignore`: the
    storages that existed before (weights, inputs). now and peak in bytes."""

    def __init__(self, ignore=()):
        super().__init__()
        self.live, self.now, self.peak, self.ignore = {}, 0, 0, set(ignore)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out

    def _add(self, t) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if not ptr or ptr in self.live or ptr in self.ignore:
            return
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        self.live[ptr] = (storage.nbytes(), weakref.ref(storage, lambda _, p=ptr: self._drop(p)))

    def _drop(self, ptr) -> None:
        self.now -= self.live.pop(ptr, (0, None))[0]


def _storages(*objects) -> set:
    return {t.untyped_storage().data_ptr() for t in pytree.tree_leaves(objects) if isinstance(t, torch.Tensor)}


# ------------------------------------------------------------------------------------------------ (a)

def measure_step(model, image_side: int, caption: int, checkpointing: bool) -> dict:
    """One LoRA step's activations: bytes saved per block (or, checkpointed, kept as its inputs), outside the blocks,
    at the end of the forward pass, and the live peak through forward and backward (LoRA gradients left out)."""
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    current, saved, forward = ["outside"], {}, [True]
    seen = {"saved": set(), "inputs": set()}   # a storage counts once as saved, once as a checkpoint's input
    handles = []

    def count(where: str, t, what: str = "saved") -> None:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen[what] and ptr not in weights:
            seen[what].add(ptr)
            saved[where] = saved.get(where, 0) + t.untyped_storage().nbytes()

    def enter(name):
        def hook(module, args, kwargs):
            current[0] = name
            if checkpointing and forward[0]:   # what the checkpoint keeps: the block's inputs
                for t in pytree.tree_leaves((args, kwargs)):
                    if isinstance(t, torch.Tensor):
                        count(name, t, "inputs")
        return hook

    for kind in BLOCK_LISTS:
        for i, block in enumerate(getattr(model, kind)):
            handles.append(block.register_forward_pre_hook(enter(f"{kind}.{i}"), with_kwargs=True))
            handles.append(block.register_forward_hook(lambda m, a, o: current.__setitem__(0, "outside")))
    weights = _storages(list(model.parameters()), list(model.buffers()))
    x, t, cap = inputs(image_side, caption)
    weights |= _storages(x, t, cap)

    def pack(tensor):
        if not checkpointing or current[0] == "outside":   # inside a checkpointed block nothing is kept
            count(current[0], tensor)
        return tensor

    live = LiveBytes(weights)
    with live, torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = model(x, t, cap, return_dict=False)[0]
        loss = torch.stack(out).float().pow(2).mean()
        after_forward = live.now
        forward[0] = False
        loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    return {"saved": saved, "after_forward": after_forward, "peak": live.peak - grads}


def units_table(no_ckpt: dict, ckpt: dict, image: int, caption: int, dim: int) -> dict:
    """The measurements in units of (dim x 2 B) per token of each block's own stream."""
    seen = {"noise_refiner": image, "context_refiner": caption, "layers": image + caption}

    def per_token(nbytes, kind):
        return nbytes / (seen[kind] * dim * 2)

    units = {}
    for kind in BLOCK_LISTS:
        blocks = [v for k, v in no_ckpt["saved"].items() if k.split(".")[0] == kind]
        inputs_kept = [v for k, v in ckpt["saved"].items() if k.split(".")[0] == kind]
        units[kind] = (per_token(sum(blocks) / len(blocks), kind), per_token(sum(inputs_kept) / len(inputs_kept), kind))
    units["outside"] = per_token(no_ckpt["saved"].get("outside", 0), "layers")
    units["backward"] = per_token(no_ckpt["peak"] - no_ckpt["after_forward"], "layers")
    return units


def activations_report() -> None:
    t0 = time.time()
    model = zimage(2, 1)
    add_engine_lora(model)
    model.train()
    image_side, caption = 32, 128
    image, cap = image_side ** 2, caption
    print(f"(a) activations: real-width Z-Image (dim 3840), 1 + 1 refiner blocks, 2 main layers, LoRA rank {RANK}; "
          f"{image} image + {cap} caption tokens (built in {time.time() - t0:.0f} s)")
    no_ckpt = measure_step(model, image_side, caption, checkpointing=False)
    ckpt = measure_step(model, image_side, caption, checkpointing=True)
    units = units_table(no_ckpt, ckpt, image, cap, 3840)
    print(f"  {'block kind':16} {'saved units':>11} {'fit':>6} {'checkpointed':>12} {'fit':>6}   (per token of its "
          f"own stream, units of 3840 x 2 B)")
    for kind in BLOCK_LISTS:
        print(f"  {kind:16} {units[kind][0]:11.2f} {zm.ZIMAGE_UNITS[kind]:6.2f} {units[kind][1]:12.2f} "
              f"{zm.ZIMAGE_CHECKPOINT_UNITS:6.2f}")
    print(f"  outside the blocks {units['outside']:.2f} (fit {zm.ZIMAGE_OUTSIDE_UNITS}); backward's own peak "
          f"{units['backward']:.2f} (fit {zm.ZIMAGE_BACKWARD_UNITS}) per token of the main layers")
    component = fit.component_from_tensors("transformer", tensors_of(model), "bench", zm.LAYOUT)
    for name, measured, checkpointing in (("no checkpointing", no_ckpt, False), ("checkpointing", ckpt, True)):
        settings = fit.Settings("zimage", resolution_px=image_side * 16, gradient_checkpointing=checkpointing)
        predicted, _ = zm.zimage_activations(component, settings, cap)
        print(f"  live peak through forward + backward, {name}: {measured['peak'] / GB:.3f} GB measured, "
              f"{predicted / GB:.3f} GB memory.py ({measured['peak'] / predicted:.2f})")
    print(f"  ({time.time() - t0:.0f} s)")


# ------------------------------------------------------------------------------------------------ (b)

def _status() -> dict:
    """VmRSS, RssAnon, RssFile of this process in bytes (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


class PeakSampler:
    """The highest VmRSS and RssAnon seen every millisecond while it runs (a transient smaller than a layer can be
    missed: a few tens of MB)."""

    def __init__(self):
        self.peak = _status()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            now = _status()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            time.sleep(0.001)

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        return self.peak


def rss_of_loading(folder: str, fp8: bool) -> dict:
    """In this (fresh) process: the RAM that loading the transformer of `folder` takes beyond the imports, as
    zimage/loading.py reads a folder (from_pretrained in bf16, then store_in_fp8 with fp8), in bytes: peak VmRSS and
    RssAnon, and both after. bf16: every weight is read once (as moving it to the GPU does), since safetensors maps
    the file and reads a page only when it is touched."""
    import gc

    from diffusers import ZImageTransformer2DModel

    from engine.models.base_storage import store_in_fp8

    gc.collect()
    base = _status()
    sampler = PeakSampler()
    model = ZImageTransformer2DModel.from_pretrained(folder, dtype=torch.bfloat16)
    if fp8:
        store_in_fp8(model, torch.bfloat16, block_lists=BLOCK_LISTS)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.sum()   # reads every page, copies nothing
    gc.collect()
    peak, after = sampler.stop(), _status()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"peak_rss": peak["VmRSS"] - base["VmRSS"], "peak_anon": peak["RssAnon"] - base["RssAnon"],
            "rss": after["VmRSS"] - base["VmRSS"], "anon": after["RssAnon"] - base["RssAnon"],
            "file": after["RssFile"] - base["RssFile"], "param_bytes": params}


def build_anon(layers: int, refiners: int, folder: str) -> dict:
    """In this (fresh) process: the anonymous RSS that building the model in bf16 takes, then after store_in_fp8;
    the bf16 model is saved to `folder` first (diffusers' layout) for rss_of_loading."""
    import gc

    from engine.models.base_storage import store_in_fp8

    base = _status()["RssAnon"]
    model = zimage(layers, refiners)
    out = {"bf16_anon": _status()["RssAnon"] - base, "bf16_bytes": sum(p.numel() * 2 for p in model.parameters())}
    model.save_pretrained(folder)
    store_in_fp8(model, torch.bfloat16, block_lists=BLOCK_LISTS)
    gc.collect()
    out["fp8_anon"] = _status()["RssAnon"] - base
    out["fp8_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    out["outside_fp8"] = sorted({n.rsplit(".", 1)[0] for n, p in model.named_parameters()
                                 if p.dtype == torch.float8_e4m3fn and not n.startswith(BLOCK_LISTS)})
    return out


def _child(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def parameters_report() -> None:
    import tempfile

    layers, refiners = 2, 0
    with tempfile.TemporaryDirectory() as folder:
        built = _child("--build-anon", str(layers), str(refiners), folder)
        loaded = {"bf16": _child("--rss", folder), "fp8": _child("--rss", folder, "--fp8")}
    c = fit.component_from_tensors("transformer", zm.zimage_tensors(layers=layers, refiners=refiners), "bench",
                                   zm.LAYOUT)
    predicted = {"bf16": fit.quantized_bytes(c.params, c.fp8_params, 0, 0, "none", 2),
                 "fp8": fit.quantized_bytes(c.params, c.fp8_params, 0, 0, "fp8", 2)}
    print(f"(b) parameters of a real-width Z-Image with {layers} main layers and no refiners: {c.params / 1e9:.3f} B "
          f"(GB = 2**30; RSS beyond the process's imports, fresh processes)")
    print(f"  {'storage':6} {'param bytes':>11} {'fit':>7} {'built: anon RSS':>16} {'ratio':>6} {'loaded: anon':>13} "
          f"{'+ file pages':>12} {'= RSS':>7} {'held/bytes':>10}")
    for q in ("bf16", "fp8"):
        nbytes, anon, load = built[f"{q}_bytes"], built[f"{q}_anon"], loaded[q]
        print(f"  {q:6} {nbytes / GB:11.3f} {predicted[q] / GB:7.3f} {anon / GB:16.3f} {anon / nbytes:6.2f} "
              f"{load['anon'] / GB:13.3f} {load['file'] / GB:12.3f} {load['rss'] / GB:7.3f} "
              f"{(load['rss'] if q == 'bf16' else load['anon']) / nbytes:10.2f}")
    print(f"  fp8 / bf16: {built['fp8_bytes'] / built['bf16_bytes']:.3f} in parameter bytes "
          f"({predicted['fp8'] / predicted['bf16']:.3f} predicted), {built['fp8_anon'] / built['bf16_anon']:.3f} in "
          f"the built model's anonymous RSS, {loaded['fp8']['anon'] / loaded['bf16']['rss']:.3f} loaded "
          f"(fp8 anonymous / bf16 read); loading in fp8 peaks at {loaded['fp8']['peak_rss'] / GB:.3f} GB RSS "
          f"(the bf16 file pages stay mapped)")
    print("  built: random init in this process (malloc keeps ~0.2 GB beyond the bytes either way); loaded: "
          "from_pretrained (safetensors maps the file: bf16 weights are file pages, read once here); held: what "
          "holds the weights (bf16 all of RSS, fp8 the anonymous part)")
    print(f"  outside the blocks, store_in_fp8 also casts: {', '.join(built['outside_fp8']) or 'nothing'}")


# ------------------------------------------------------------------------------------------------ (c)

def encoder_report() -> None:
    from transformers import Qwen3Config, Qwen3Model

    tokens, kept, peaks = 512, {}, {}
    for layers in (2, 4):
        config = Qwen3Config(hidden_size=2560, intermediate_size=9728, num_hidden_layers=layers,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=1024,
                             tie_word_embeddings=True)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        encoder = Qwen3Model(config).eval()
        torch.set_default_dtype(previous)
        ids = torch.randint(0, 1024, (1, tokens))
        mask = torch.ones(1, tokens, dtype=torch.long)
        mask[:, 100:] = 0   # a short caption padded to 512, as encode_text pads it
        live = LiveBytes(_storages(list(encoder.parameters()), ids, mask))
        with live, torch.no_grad():
            states = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        unit = tokens * 2560 * 2
        kept[layers], peaks[layers] = live.now / unit, live.peak / unit
        del states, encoder
    per_layer = (kept[4] - kept[2]) / 2
    own = max(peaks[n] - kept[n] for n in kept)   # a layer's own peak beyond the states kept (the last layer's)
    full = 1 + 36 * per_layer + own
    print(f"(c) Qwen3 encoding {tokens} tokens with output_hidden_states (units of 2560 x 2 B per token): "
          f"{per_layer:.2f} kept per layer (its hidden state), a layer's own peak {own:.1f} beyond them "
          f"(on the CPU) -> {full:.1f} at 36 layers "
          f"(memory.py {zm.MEMORY['zimage'].encoder_live_states}; fit's default, T5's, is 8)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rss", metavar="FOLDER", help="print the RAM of loading FOLDER's transformer (JSON)")
    parser.add_argument("--fp8", action="store_true", help="with --rss: store the transformer in fp8")
    parser.add_argument("--build-anon", nargs=3, metavar=("LAYERS", "REFINERS", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("a", "b", "c"), help="one part of the report")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.rss:
        print(json.dumps(rss_of_loading(args.rss, args.fp8)))
    elif args.build_anon:
        layers, refiners, folder = args.build_anon
        print(json.dumps(build_anon(int(layers), int(refiners), folder)))
    else:
        for part, report in (("a", activations_report), ("b", parameters_report), ("c", encoder_report)):
            if args.only in (None, part):
                report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
