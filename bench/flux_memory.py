"""FLUX memory: the real parameter memory and peaks against engine/models/fit/'s estimate (FLUX's part of it:
engine/models/families/flux/memory.py).

    python bench/flux_memory.py            # CPU: a real-width FLUX with 2 double + 2 single blocks (random init)
    python bench/flux_memory.py --gpu      # a CUDA GPU: full-size FLUX.1-dev (random init), each tier at 512, 1024

CPU (a minute, ~6 GB of RAM): the model has FLUX.1's widths (hidden 3072, 24 heads, T5 4096, CLIP 768, 64 input
channels) but 2 + 2 blocks. Prints its parameter memory in bf16 and after engine.models.base_storage.store_in_fp8
(the ratio), fit's prediction of both from the same tensor shapes, and the activations a double and a single block
save for backward (saved-tensor hooks, LoRA rank 16 on the engine's default targets, bf16 autocast) against fit's
per-token units.

--gpu (about 6 minutes on an H200; nothing downloaded): FLUX.1-dev built on the meta device and materialized on the
GPU with random weights; LoRA rank 16 on the engine's targets; gradient checkpointing; packed latents of the right
token count and random T5/CLIP states (512 tokens). For a bf16 reference and each tier's settings (below) at 512 and
1024 px: a few AdamW steps, s/it, torch.cuda.max_memory_allocated and _reserved, the tier's budget and fit's
prediction, with the ratio. Block swap is the engine's (engine/models/block_swap.py); adamw8bit needs bitsandbytes
(without it AdamW runs and the prediction is for AdamW). The device machine has no diffusers: carry it as a wheel
(bench-only), e.g. `pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1
bitsandbytes==0.50.2` plus the manylinux platform flags, then in the run: `pip install --no-index --no-deps
--target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 bench/flux_memory.py --gpu`.

Tier settings (fp8 base, 8-bit AdamW, rank 16, checkpointing, cached text, batch 1; budgets leave ~1 GB for the
desktop): 24 GB no block swap (sd-scripts docs/flux_train_network.md: 24 GB trains fp8 batch 2; ai-toolkit's
train_lora_flux_24gb.yaml: 8-bit base, adamw8bit, rank 16; fluxgym's 20G tier: fp8 + adamw8bit); 16 GB block swap
16 at 1024 px (sd-scripts: 16 GB "batch 1 + blocks_to_swap"; LoRA_Easy_Training_Scripts#344: a 16 GB 5060 Ti at
14.3-14.5 GB with fp8 + adamw8bit); 12 GB block swap 34 (sd-scripts: 12 GB "blocks_to_swap 16 + 8-bit AdamW"; its 16
swapped blocks are 8 double + 16 single, 5.0 B parameters, as many as Easel's last 34 single blocks, 4.8 B).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from engine.models import fit
from engine.models.families import capabilities
from engine.models.families.flux import memory as flux_memory

GB = 2**30
RANK = 16
TIERS = {  # name -> (budget GB or None, Settings changes); fp8, adamw8bit, rank 16 unless said
    "bf16 reference": (None, {"quantize_base": "none", "optimizer": "adamw"}),
    "24 GB": (23.0, {"block_swap": 0}),
    "16 GB": (15.0, {"block_swap": 16}),
    "12 GB": (11.0, {"block_swap": 34}),
}
BASE = fit.Settings("flux", quantize_base="fp8", optimizer="adamw8bit", rank=RANK, gradient_checkpointing=True)


def flux(double: int, single: int, device: str = "cpu"):
    """FluxTransformer2DModel with FLUX.1-dev's widths, random weights in bf16 (on the meta device first for a GPU)."""
    from diffusers import FluxTransformer2DModel

    config = {"num_layers": double, "num_single_layers": single, "attention_head_dim": 128, "num_attention_heads": 24,
              "joint_attention_dim": 4096, "pooled_projection_dim": 768, "in_channels": 64, "guidance_embeds": True}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)   # built in bf16: no fp32 copy of 12 B parameters on the way
    try:
        if device == "cpu":
            return FluxTransformer2DModel(**config)
        with torch.device("meta"):
            model = FluxTransformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0 if name.endswith(".weight") else 0.0)  # norms 1
    return model


def add_engine_lora(model, modulation: bool = False) -> list:
    """LoRA as the trainer adds it: the family's targets, fp32 trained weights."""
    from engine.config.schema import NetworkConfig
    from engine.models.families.flux.record import lora_target_names
    from engine.models.lora import add_lora

    model.requires_grad_(False)
    names = lora_target_names(model, NetworkConfig(lora_modulation=modulation))
    params = add_lora(model, RANK, float(RANK), 0.0, names)
    for p in params:
        p.data = p.data.float()
    return params


def tensors_of(model) -> dict:
    """fit's view of a module: {name: (shape, dtype)} of its base weights (LoRA layers left out)."""
    names = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}
    return {k.replace(".base_layer", ""): (tuple(v.shape), names[v.dtype]) for k, v in model.state_dict().items()
            if "lora_" not in k}


def param_bytes(model, trained: bool = False) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad == trained)


def inputs(tokens_side: int, batch: int, device: str, text_tokens: int = 512) -> dict:
    n = tokens_side * tokens_side
    img_ids = torch.zeros(n, 3, device=device)
    position = torch.arange(n, device=device)
    img_ids[:, 1], img_ids[:, 2] = position // tokens_side, position % tokens_side
    return {"hidden_states": torch.randn(batch, n, 64, device=device, dtype=torch.bfloat16),
            "encoder_hidden_states": torch.randn(batch, text_tokens, 4096, device=device, dtype=torch.bfloat16),
            "pooled_projections": torch.randn(batch, 768, device=device, dtype=torch.bfloat16),
            "timestep": torch.full((batch,), 0.5, device=device), "guidance": torch.ones(batch, device=device),
            "img_ids": img_ids, "txt_ids": torch.zeros(text_tokens, 3, device=device), "return_dict": False}


# ------------------------------------------------------------------------------------------------ CPU

def saved_units(model, tokens_side: int, text_tokens: int) -> dict:
    """Bytes each block saves for backward, per token in units of (hidden x 2 B), from saved-tensor hooks."""
    current, saved = ["outside"], {}
    seen: set = set()
    for kind in ("transformer_blocks", "single_transformer_blocks"):
        for i, block in enumerate(getattr(model, kind)):
            block.register_forward_pre_hook(lambda m, a, name=f"{kind}.{i}": current.__setitem__(0, name))
            block.register_forward_hook(lambda m, a, o: current.__setitem__(0, "outside"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved[current[0]] = saved.get(current[0], 0) + storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs(tokens_side, 1, "cpu", text_tokens))[0]
    out.float().pow(2).mean().backward()
    per_unit = (tokens_side ** 2 + text_tokens) * model.config.num_attention_heads * 128 * 2
    return {name: b / per_unit for name, b in saved.items()}


def cpu_report() -> None:
    from engine.models.base_storage import store_in_fp8

    t0 = time.time()
    model = flux(2, 2)
    add_engine_lora(model)
    component = fit.component_from_tensors("transformer", tensors_of(model), "bench", flux_memory.LAYOUT)
    c = component
    predicted = {q: fit.quantized_bytes(c.params, c.fp8_params, c.bnb_params, c.bnb_rows, q, 2)
                 for q in ("none", "fp8")}
    print(f"real-width FLUX, 2 double + 2 single blocks: {c.params / 1e9:.3f} B base parameters "
          f"(built in {time.time() - t0:.0f} s)")
    units = saved_units(model, 32, 128)
    bf16 = param_bytes(model)
    store_in_fp8(model, torch.bfloat16, block_lists=capabilities("flux").block_lists)
    fp8 = param_bytes(model)
    rows = [("bf16", bf16, predicted["none"]), ("fp8 (store_in_fp8)", fp8, predicted["fp8"])]
    print(f"{'storage':20} {'measured GB':>12} {'fit GB':>10} {'ratio':>6}")
    for name, measured, pred in rows:
        print(f"{name:20} {measured / GB:12.3f} {pred / GB:10.3f} {measured / pred:6.3f}")
    print(f"fp8 / bf16: {fp8 / bf16:.3f} measured, {predicted['fp8'] / predicted['none']:.3f} predicted "
          f"(the embedders, norm_out and proj_out stay in bf16)")
    doubles = [v for k, v in units.items() if k.startswith("transformer_blocks")]
    singles = [v for k, v in units.items() if k.startswith("single_transformer_blocks")]
    print(f"saved activations per token, units of hidden x 2 B (1024 image + 128 text tokens, LoRA rank {RANK}):")
    print(f"  double block {sum(doubles) / len(doubles):.2f} (fit {flux_memory.FLUX_DOUBLE_UNITS}), single block "
          f"{sum(singles) / len(singles):.2f} (fit {flux_memory.FLUX_SINGLE_UNITS}), outside the blocks "
          f"{units.get('outside', 0):.2f} (fit {flux_memory.FLUX_OUTSIDE_UNITS})")


# ------------------------------------------------------------------------------------------------ GPU

def make_optimizer(params, name: str):
    """(optimizer, the name it really is): adamw8bit falls back to AdamW without bitsandbytes."""
    if name == "adamw8bit":
        try:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(params, lr=1e-4), "adamw8bit"
        except Exception as e:  # noqa: BLE001 - no bitsandbytes here: measure AdamW, predict AdamW
            print(f"adamw8bit unavailable ({type(e).__name__}: {e}); AdamW runs instead", flush=True)
    return torch.optim.AdamW(params, lr=1e-4), "adamw"


def run_steps(model, params, settings: fit.Settings, steps: int, device: str) -> dict:
    """`steps` LoRA steps (the first is warm-up): s/it and the peaks (NaN off CUDA)."""
    from engine.models.block_swap import move_except_swapped, swap_blocks

    cuda = device == "cuda"
    swap = swap_blocks(model, settings.block_swap, device, capabilities("flux").block_lists) if settings.block_swap else None
    move_except_swapped(model, device, swap)
    optimizer, used = make_optimizer(params, settings.optimizer if cuda else "adamw")
    batch = inputs(settings.resolution_px // 16, settings.batch_size, device)
    target = torch.randn_like(batch["hidden_states"], dtype=torch.float32)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(**batch)[0]
        torch.nn.functional.mse_loss(out.float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    nan = float("nan")
    result = {"s_per_it": sum(times[1:]) / max(1, len(times) - 1), "optimizer": used,
              "allocated": torch.cuda.max_memory_allocated() / GB if cuda else nan,
              "reserved": torch.cuda.max_memory_reserved() / GB if cuda else nan}
    del optimizer
    if swap is not None:
        swap.remove()
    if cuda:
        torch.cuda.empty_cache()
    return result


def gpu_report(steps: int, resolutions: list[int], device: str = "cuda", blocks: tuple = (19, 38)) -> None:
    """The table; `device` cpu and few `blocks` only check the script itself (no peaks off CUDA)."""
    from engine.models.base_storage import store_in_fp8

    t0 = time.time()
    model = flux(*blocks, device)
    params = add_engine_lora(model)
    model.enable_gradient_checkpointing()
    model.train()
    transformer = fit.component_from_tensors("transformer", tensors_of(model), "bench", flux_memory.LAYOUT)
    sizes = fit.ModelSizes("flux", {**fit.model_sizes(_known_model()).components, "transformer": transformer})
    where = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"FLUX.1-dev layout {blocks}, random weights, on {where} in {time.time() - t0:.0f} s; "
          f"{sum(p.numel() for p in params) / 1e6:.1f} M LoRA parameters")
    header = (f"{'tier':15} {'px':>5} {'settings':32} {'s/it':>6} {'allocated':>9} {'reserved':>8} {'budget':>6} "
              f"{'predicted':>9} {'alloc/pred':>10} {'+ctx pred':>9}")
    print(header)
    rows = []
    for tier, (budget, changes) in TIERS.items():
        if changes.get("quantize_base", BASE.quantize_base) == "fp8" and not getattr(model, "easel_fp8", False):
            store_in_fp8(model, torch.bfloat16, block_lists=capabilities("flux").block_lists)
            model.easel_fp8 = True
        for px in resolutions:
            settings = replace(BASE, resolution_px=px, **changes)
            settings = replace(settings, block_swap=min(settings.block_swap, sum(blocks) - 1))
            measured = run_steps(model, params, settings, steps, device)
            settings = replace(settings, optimizer=measured["optimizer"])
            predicted = fit.estimate(sizes, settings)
            words = f"{settings.quantize_base}, {settings.optimizer}, swap {settings.block_swap}"
            row = (f"{tier:15} {px:5} {words:32} {measured['s_per_it']:6.2f} {measured['allocated']:9.2f} "
                   f"{measured['reserved']:8.2f} {budget or '-':>6} {predicted.allocated_gb:9.2f} "
                   f"{measured['allocated'] / predicted.allocated_gb:10.2f} {predicted.phases['training']:9.2f}")
            print(row, flush=True)
            rows.append(row)
    print("allocated = torch.cuda.max_memory_allocated (GB = 2**30); predicted = fit's allocated_gb (the same "
          "quantity); '+ctx pred' adds the CUDA context and allocator slack: compare it with the budget")


def _known_model():
    from engine.config.schema import ModelConfig

    return ModelConfig(family="flux", path="black-forest-labs/FLUX.1-dev")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="full-size FLUX.1-dev on the CUDA GPU, every tier")
    parser.add_argument("--steps", type=int, default=4, help="steps per setting on the GPU (the first is warm-up)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--check-on-cpu", action="store_true",
                        help="with --gpu: run the GPU table's code on the CPU with 1 + 1 blocks at 256 px (no peaks)")
    args = parser.parse_args()
    if args.gpu and args.check_on_cpu:
        gpu_report(2, [256], "cpu", (1, 1))
    elif args.gpu:
        if not torch.cuda.is_available():
            print("no CUDA GPU: run without --gpu for the CPU part", file=sys.stderr)
            return 2
        gpu_report(args.steps, args.resolutions)
    else:
        cpu_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
