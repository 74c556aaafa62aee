"""FLUX.2 klein memory on the CPU: the figures behind engine/models/families/flux2/memory.py (its activation units,
its encoder's live states) and the parameter memory of a real-width klein in bf16 and in fp8 against fit's estimate.

    python bench/flux2_memory.py                   # (a) activations (b) parameters bf16 / fp8 (c) Qwen3 encoding
    python bench/flux2_memory.py --only a --width 4096       # one part; (a) at the 9B's width only

(a) 3.5 minutes (4B width) and 2 (9B width) on 2 cores, 4.1 GB of RAM at most: klein transformers with the real
widths (4B: 3072, 24 heads, 2 double + 2 single blocks; 9B: 4096, 32 heads, 1 + 1), random bf16 weights, peft LoRA
rank 16 (fp32) on every block linear, bf16 autocast, SDPA; 1024 image tokens (512 px) and the 512 text tokens every
caption is padded to. Per block, the bytes saved for backward (saved-tensor hooks, each storage counted once); with
gradient checkpointing, the inputs each block keeps; and the peak of every tensor alive through forward and
backward (zimage_memory.LiveBytes), against the peak memory.py predicts.
(b) under a minute: the parameter bytes of a 2 + 2-block real-width klein 4B in bf16 and after
base_storage.store_in_fp8, as fit counts them and as the process's anonymous memory grows (fresh processes), built
and loaded from a saved folder.
(c) Qwen3ForCausalLM (the real layers of Qwen3-4B and Qwen3-8B, the real vocabulary) encoding one 512-token caption
with output_hidden_states as Flux2KleinPipeline does: the live states per token at 2 and 4 layers, extrapolated to
36, with the logits of the vocabulary apart (2 minutes, 4.6 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from torch.utils import _pytree as pytree

from bench.zimage_memory import LiveBytes, PeakSampler, _status, _storages, tensors_of
from engine.models import fit
from engine.models.families.flux2 import memory as fm

GB = 2**30
RANK = 16
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")   # caps.block_lists, in run order
IMAGE_SIDE, TEXT = 32, fm.TEXT_TOKENS     # 1024 image tokens (512 px), 512 text tokens
JOINT = {3072: 3 * fm.QWEN3["4b"]["hidden"], 4096: 3 * fm.QWEN3["9b"]["hidden"]}   # the text states' width


def klein(double: int, single: int, width: int):
    """Flux2Transformer2DModel at a real width (heads of 128) with random weights, built in bf16."""
    from diffusers import Flux2Transformer2DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        return Flux2Transformer2DModel(num_layers=double, num_single_layers=single, num_attention_heads=width // 128,
                                       joint_attention_dim=JOINT[width], guidance_embeds=False)
    finally:
        torch.set_default_dtype(previous)


def add_engine_lora(model) -> list:
    """LoRA as the trainer adds it: every block linear (record.py's targets), trained weights in fp32."""
    from engine.models.lora import add_lora

    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and (m := re.match(fm.LAYOUT.block.pattern + r"(.+)$", name))
             and m[3] in fm.FLUX2_TARGETS]
    model.requires_grad_(False)
    params = add_lora(model, RANK, float(RANK), 0.0, names)
    for p in params:
        p.data = p.data.float()
    return params


def inputs(model) -> dict:
    """One sample as the pipeline passes it: packed latent tokens, the 512 text states, 4-D positions."""
    zeros = torch.zeros(IMAGE_SIDE ** 2)
    rows = torch.arange(IMAGE_SIDE).repeat_interleave(IMAGE_SIDE)
    cols = torch.arange(IMAGE_SIDE).repeat(IMAGE_SIDE)
    return {"hidden_states": torch.randn(1, IMAGE_SIDE ** 2, 128, dtype=torch.bfloat16),
            "encoder_hidden_states": torch.randn(1, TEXT, model.config.joint_attention_dim, dtype=torch.bfloat16),
            "timestep": torch.full((1,), 0.5), "img_ids": torch.stack([zeros, rows, cols, zeros], -1),
            "txt_ids": torch.stack([torch.zeros(TEXT)] * 3 + [torch.arange(TEXT).float()], -1), "guidance": None}


# ------------------------------------------------------------------------------------------------ (a)

def measure_step(model, checkpointing: bool) -> dict:
    """One LoRA step's activations: bytes saved per block (or, checkpointed, kept as its inputs), outside the blocks,
    at the end of the forward pass, and the live peak through forward and backward (LoRA gradients left out)."""
    model.enable_gradient_checkpointing() if checkpointing else model.disable_gradient_checkpointing()
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
    args = inputs(model)
    weights = _storages(list(model.parameters()), list(model.buffers()), args)

    def pack(tensor):
        if not checkpointing or current[0] == "outside":   # inside a checkpointed block nothing is kept
            count(current[0], tensor)
        return tensor

    live = LiveBytes(weights)
    with live, torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = model(**args, return_dict=False)[0]
        loss = out.float().pow(2).mean()
        after_forward = live.now
        forward[0] = False
        loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    return {"saved": saved, "after_forward": after_forward, "peak": live.peak - grads}


def activations_report(width: int) -> dict:
    t0 = time.time()
    double, single = (2, 2) if width == 3072 else (1, 1)
    model = klein(double, single, width)
    add_engine_lora(model)
    model.train()
    tokens = IMAGE_SIDE ** 2 + TEXT
    print(f"(a) activations: real-width klein ({width} wide), {double} double + {single} single blocks, LoRA rank "
          f"{RANK}; {IMAGE_SIDE ** 2} image + {TEXT} text tokens (built in {time.time() - t0:.0f} s)")
    no_ckpt, ckpt = measure_step(model, checkpointing=False), measure_step(model, checkpointing=True)

    def units(nbytes):
        return nbytes / (tokens * width * 2)

    out = {}
    for kind, fit_units in (("transformer_blocks", fm.DOUBLE_UNITS), ("single_transformer_blocks", fm.SINGLE_UNITS)):
        kept = [v for k, v in no_ckpt["saved"].items() if k.split(".")[0] == kind]
        inputs_kept = [v for k, v in ckpt["saved"].items() if k.split(".")[0] == kind]
        out[kind] = (units(sum(kept) / len(kept)), units(max(inputs_kept)), units(min(inputs_kept)))
        print(f"  {kind:26} saved {out[kind][0]:6.2f} (memory.py {fit_units:5.2f})   checkpointed inputs "
              f"{out[kind][2]:.2f}-{out[kind][1]:.2f} (memory.py {fm.CHECKPOINT_UNITS:.2f})")
    out["outside"], out["backward"] = units(no_ckpt["saved"].get("outside", 0)), \
        units(no_ckpt["peak"] - no_ckpt["after_forward"])
    print(f"  outside the blocks {out['outside']:.2f} (memory.py {fm.OUTSIDE_UNITS}); backward's own peak "
          f"{out['backward']:.2f} (memory.py {fm.BACKWARD_UNITS}), units of {width} x 2 B per token")
    component = fit.component_from_tensors("transformer", tensors_of(model), "bench", fm.LAYOUT)
    for name, measured, checkpointing in (("no checkpointing", no_ckpt, False), ("checkpointing", ckpt, True)):
        settings = fit.Settings("flux2", resolution_px=IMAGE_SIDE * 16, gradient_checkpointing=checkpointing)
        predicted, _ = fm.flux2_activations(component, settings, TEXT)
        out[name] = (measured["peak"] / GB, predicted / GB)
        print(f"  live peak through forward + backward, {name}: {measured['peak'] / GB:.3f} GB measured, "
              f"{predicted / GB:.3f} GB memory.py ({measured['peak'] / max(predicted, 1):.2f})")
    print(f"  ({time.time() - t0:.0f} s)")
    return out


# ------------------------------------------------------------------------------------------------ (b)

def rss_of_loading(folder: str, fp8: bool) -> dict:
    """In this (fresh) process: the RAM that loading the transformer of `folder` takes beyond the imports, as
    flux2/loading.py reads a folder (from_pretrained in bf16, then store_in_fp8), in bytes."""
    import gc

    from diffusers import Flux2Transformer2DModel

    from engine.models.base_storage import store_in_fp8

    gc.collect()
    base = _status()
    sampler = PeakSampler()
    model = Flux2Transformer2DModel.from_pretrained(folder, dtype=torch.bfloat16)
    if fp8:
        store_in_fp8(model, torch.bfloat16, block_lists=BLOCK_LISTS)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.sum()   # reads every page, copies nothing
    gc.collect()
    peak, after = sampler.stop(), _status()
    return {"peak_rss": peak["VmRSS"] - base["VmRSS"], "rss": after["VmRSS"] - base["VmRSS"],
            "anon": after["RssAnon"] - base["RssAnon"], "file": after["RssFile"] - base["RssFile"],
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def build_anon(double: int, single: int, folder: str) -> dict:
    """In this (fresh) process: the anonymous RSS of building the model in bf16, then after store_in_fp8; the bf16
    model is saved to `folder` first (diffusers' layout)."""
    import gc

    from engine.models.base_storage import store_in_fp8

    base = _status()["RssAnon"]
    model = klein(double, single, 3072)
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

    double, single = 2, 2
    with tempfile.TemporaryDirectory() as folder:
        built = _child("--build-anon", str(double), str(single), folder)
        loaded = {"bf16": _child("--rss", folder), "fp8": _child("--rss", folder, "--fp8")}
    c = fit.component_from_tensors("transformer", fm.flux2_tensors(double, single), "bench", fm.LAYOUT)
    predicted = {q: fit.quantized_bytes(c.params, c.fp8_params, 0, 0, q if q == "fp8" else "none", 2)
                 for q in ("bf16", "fp8")}
    print(f"(b) parameters of a real-width klein 4B with {double} double + {single} single blocks: "
          f"{c.params / 1e9:.3f} B (GB = 2**30; RSS beyond the process's imports, fresh processes)")
    print(f"  {'storage':7} {'param bytes':>11} {'fit':>7} {'built: anon':>12} {'ratio':>6} {'loaded: anon':>13} "
          f"{'+ file pages':>12} {'= RSS':>7} {'held/bytes':>10}")
    for q in ("bf16", "fp8"):
        nbytes, anon, load = built[f"{q}_bytes"], built[f"{q}_anon"], loaded[q]
        print(f"  {q:7} {nbytes / GB:11.3f} {predicted[q] / GB:7.3f} {anon / GB:12.3f} {anon / nbytes:6.2f} "
              f"{load['anon'] / GB:13.3f} {load['file'] / GB:12.3f} {load['rss'] / GB:7.3f} "
              f"{(load['rss'] if q == 'bf16' else load['anon']) / nbytes:10.2f}")
    print(f"  fp8 / bf16: {built['fp8_bytes'] / built['bf16_bytes']:.3f} in parameter bytes "
          f"({predicted['fp8'] / predicted['bf16']:.3f} fit); loading in fp8 peaks at "
          f"{loaded['fp8']['peak_rss'] / GB:.3f} GB RSS (the bf16 file's pages stay mapped)")
    print(f"  outside the blocks, store_in_fp8 also casts: {', '.join(built['outside_fp8']) or 'nothing'}")


# ------------------------------------------------------------------------------------------------ (c)

def encoder_report() -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokens = TEXT
    for variant, name in (("4b", "Qwen3-4B"), ("9b", "Qwen3-8B")):
        q = fm.QWEN3[variant]
        width, peaks = q["hidden"], {}
        for layers in (2, 4):
            config = Qwen3Config(hidden_size=width, intermediate_size=q["intermediate"], num_hidden_layers=layers,
                                 num_attention_heads=fm.QWEN3_HEADS, num_key_value_heads=fm.QWEN3_KV_HEADS,
                                 head_dim=fm.HEAD_DIM, vocab_size=fm.VOCAB, tie_word_embeddings=q["tied"])
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)
            encoder = Qwen3ForCausalLM(config).eval()
            torch.set_default_dtype(previous)
            ids = torch.randint(0, fm.VOCAB, (1, tokens))
            mask = torch.ones(1, tokens, dtype=torch.long)
            mask[:, 100:] = 0   # a short caption padded to 512, as the pipeline pads it
            live = LiveBytes(_storages(list(encoder.parameters()), ids, mask))
            with live, torch.no_grad():   # the pipeline's call, then its stack of three layers' states
                output = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
                stacked = torch.stack([output.hidden_states[k] for k in (-3, -2, -1)], dim=1)
            peaks[layers] = live.peak / (tokens * width * 2)
            del output, stacked, encoder
        per_layer = (peaks[4] - peaks[2]) / 2
        logits = fm.VOCAB / width
        states = peaks[4] + (fm.QWEN3_LAYERS - 4) * per_layer - logits
        print(f"(c) {name} ({width} wide) encoding {tokens} tokens as Flux2KleinPipeline does, units of {width} x 2 B "
              f"per token: peak {peaks[2]:.1f} at 2 layers, {peaks[4]:.1f} at 4 ({per_layer:.2f} per layer) -> at 36 "
              f"layers {states:.1f} of states + {logits:.1f} of logits (memory.py {fm.ENCODER_STATES} + logits)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("a", "b", "c"), help="one part of the report")
    parser.add_argument("--width", type=int, choices=(3072, 4096), help="(a) at one width only")
    parser.add_argument("--rss", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--fp8", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build-anon", nargs=3, metavar=("DOUBLE", "SINGLE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.rss:
        print(json.dumps(rss_of_loading(args.rss, args.fp8)))
    elif args.build_anon:
        double, single, folder = args.build_anon
        print(json.dumps(build_anon(int(double), int(single), folder)))
    else:
        if args.only in (None, "a"):
            for width in (args.width,) if args.width else (3072, 4096):
                activations_report(width)
        if args.only in (None, "b"):
            parameters_report()
        if args.only in (None, "c"):
            encoder_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
