"""Where the model's parts are while a run trains: on a GPU the VAE and the frozen text encoders wait in CPU RAM
once their caches are built (parked), the denoiser goes to the device (with block swap, some of its blocks stay in
CPU RAM), and sampling or a save's self-check brings every part back for a moment (whole_model_on_device).
"""
from __future__ import annotations

import contextlib

import torch

from engine.training.speed import compile_repeated_blocks, prefer_channels_last


def encode_sample_prompts(family, comps, sampling, batches, status) -> None:
    """FLUX: the sample prompts encoded now, while the frozen text encoders are still on the GPU, so sampling
    never brings them back (Family.cached_sample_prompts)."""
    from engine.data.cache import cache_text
    from engine.sampling.prompts import read_prompts_file

    if not family.cached_sample_prompts or batches.text_cache is None:
        return
    prompts = list(sampling.prompts) + read_prompts_file(sampling.eval_prompts_file)
    if family.caps.guidance == "cfg":  # the negative prompt ("" when none) is the unconditional pass's
        prompts.append(sampling.negative_prompt)
    if prompts:  # cached on disk like the captions: a second run never moves the text encoders to the GPU
        comps.extra["prompt_cond"] = cache_text(prompts, batches.encode_text,
                                                lambda n, total: status("caching", "Encoding the sample prompts",
                                                                        n=n, total=total),
                                                cache_dir=batches.text_cache_dir, encoder_id=batches.encoder_id)


def place_denoiser(comps, device: str, block_swap: int, training, status, block_lists: tuple = ()) -> None:
    """The denoiser onto the device once the caches are built and the idle parts are parked; with block swap, the
    swapped blocks' frozen weights stay in CPU RAM (engine/models/block_swap.py). Then the GPU speed-ups that
    cost no quality (engine/training/speed.py) and, when asked, torch.compile."""
    from engine.models.block_swap import move_except_swapped, swap_blocks

    swap = swap_blocks(comps.denoiser, block_swap, device, block_lists) if block_swap else None
    move_except_swapped(comps.denoiser, device, swap)
    comps.extra["block_swap"] = swap
    if swap is not None:
        status("loading", f"Block swap: {len(swap.blocks)} transformer blocks wait in CPU RAM between uses")
    if device == "cuda":
        prefer_channels_last(comps.denoiser)
    if training.compile:
        comps.extra["compiled"] = compile_repeated_blocks(comps.denoiser)
        if not comps.extra["compiled"]:
            status("loading", "training.compile: this model has no repeated blocks to compile; it runs as is")


def idle_modules(r) -> list:
    return idle_parts(r.comps, r.batches, r.device)


def idle_parts(comps, batches, device: str) -> list:
    """On a GPU, the VAE and frozen text encoders are idle once their caches are built: they wait in CPU RAM."""
    if device != "cuda":
        return []
    idle = [] if batches.latents is None else [comps.vae]
    return idle + (list(comps.text_encoders) if batches.text_cache is not None else [])


def park_idle(r) -> None:
    park(idle_modules(r))


def park(modules: list) -> None:
    if modules:
        for module in modules:
            module.to("cpu")
        torch.cuda.empty_cache()


@contextlib.contextmanager
def whole_model_on_device(r, text_encoders: bool = True):
    """Sampling and the LoRA self-check need every module on the device for a moment (the text encoders not when
    the sample prompts are encoded already)."""
    for module in idle_modules(r):
        if text_encoders or module is r.comps.vae:
            module.to(r.device)
    try:
        yield
    finally:
        park_idle(r)
