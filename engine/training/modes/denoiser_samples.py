"""The denoiser's samples during training: the family's diffusers pipeline at every LoRA strength, or (a model
trained from scratch, without a pipeline: the DiT) the family's own sampler; with the EMA weights when on, so the
samples show what the saved files hold. The step timer stops before them: s/it never includes sampling.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from engine.training.placement import whole_model_on_device


def render_samples(r, final: bool = False, score=None) -> None:
    """Sample images with the current weights (engine.sampling.render renders them); a sample event per image.
    The final samples add the evaluation prompts file's. score(results): adds a "reward" to each (RL's phase)."""
    from engine.sampling.prompts import read_prompts_file

    sampling = r.preset.sampling
    prompts = list(sampling.prompts) + (read_prompts_file(sampling.eval_prompts_file) if final else [])
    if not prompts:
        return
    r.status("sampling", f"Rendering {len(prompts)} prompt(s) at step {r.step}")
    started = time.perf_counter()
    size = (sampling.width_px or r.preset.dataset.resolution_px, sampling.height_px or r.preset.dataset.resolution_px)
    if not r.family.caps.base_model:  # no diffusers pipeline (the DiT): engine/sampling/scratch.py
        results = render_family_samples(r, prompts, size)
    else:
        results = render_pipeline_samples(r, prompts, size)
        if r.preset.model.preview_path.strip() and r.family.preview_pipeline is not None:
            results += render_preview_samples(r, prompts, size)
    if score is not None:  # RL: each sample's reward beside it
        score(results)
    for result in results:
        r.emit("sample", **result)
    # training s/it never includes this: the step timer stops before at_boundary
    r.status("sampling", f"{len(results)} sample(s) in {time.perf_counter() - started:.1f} s", seconds=round(
        time.perf_counter() - started, 2))


def render_family_samples(r, prompts: list[str], size: tuple[int, int]) -> list[dict]:
    """A model without a pipeline (the DiT): its EMA weights when on; the global RNG is left as it was, so a
    resumed run draws what an uninterrupted one does."""
    from engine.sampling.render import save_samples
    from engine.sampling.scratch import render

    sampling = r.preset.sampling
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []), \
            (r.ema.applied() if r.ema else contextlib.nullcontext()), whole_model_on_device(r):
        images = render(r.family, r.comps, prompts, sampling, sampling.seed, size)
    return save_samples(images, prompts, sampling, size, r.run_dir / "samples", r.step,
                        extra_info={"Model": r.family.name, "Run": r.preset.output.run_name})


def render_pipeline_samples(r, prompts: list[str], size: tuple[int, int]) -> list[dict]:
    """The family's diffusers pipeline, at every LoRA strength (engine/sampling/render.py), with the EMA weights
    when on: the samples show what the saved files hold."""
    from engine.sampling.render import sample_images

    sampling = r.preset.sampling
    cond = r.comps.extra.get("prompt_cond")
    cond = cond if cond and all(p in cond for p in prompts) else None
    with whole_model_on_device(r, text_encoders=cond is None), vae_in_pipeline_dtype(r), torch.no_grad(), \
            (r.ema.applied() if r.ema else contextlib.nullcontext()):
        results = sample_images(
            r.family.pipeline(r.comps), prompts, sampling.negative_prompt, sampling.seed, sampling.steps,
            sampling.guidance_scale, size[0], size[1], sampling.strengths, r.run_dir / "samples", r.step,
            extra_info={"Model": Path(r.preset.model.path).name, "LoRA": r.preset.output.run_name},
            # a flow model's default is flow Euler already (FLUX's, or use_flow_sampler's for a UNet)
            sampler=None if sampling.sampler == "default" or r.objective.name == "flow" else sampling.sampler,
            max_sequence_length=r.comps.extra.get("max_sequence_length", 77), prompt_cond=cond,
            sample_kwargs=r.family.sample_kwargs, pipeline_guidance=r.family.pipeline_guidance)
    return results


def render_preview_samples(r, prompts: list[str], size: tuple[int, int]) -> list[dict]:
    """The same prompts on the family's distilled sibling (model.preview_path: Z-Image Turbo) with the LoRA as it is
    now, at that model's own steps and guidance; the training denoiser waits in CPU RAM meanwhile (on a GPU)."""
    from engine.models.block_swap import move_except_swapped, swap_blocks
    from engine.sampling.render import sample_images

    sampling, model = r.preset.sampling, r.preset.model
    steps, guidance = r.family.preview_sampling
    cond = r.comps.extra.get("prompt_cond")
    cond = cond if cond and all(p in cond for p in prompts) else None
    progress = lambda text, n, total: r.status("sampling", text, n=n, total=total)  # noqa: E731
    with training_denoiser_parked(r), whole_model_on_device(r, text_encoders=cond is None), \
            vae_in_pipeline_dtype(r), torch.no_grad(), (r.ema.applied() if r.ema else contextlib.nullcontext()):
        pipe = r.family.preview_pipeline(r.comps, model, r.weight_dtype, progress)
        swap = swap_blocks(pipe.transformer, model.block_swap, r.device, r.family.caps.block_lists) \
            if model.block_swap and r.device == "cuda" else None
        move_except_swapped(pipe.transformer, r.device, swap)
        try:
            results = sample_images(
                pipe, prompts, sampling.negative_prompt, sampling.seed, steps, guidance, size[0], size[1],
                sampling.strengths, r.run_dir / "samples", r.step, file_prefix="preview_",
                extra_info={"Model": Path(model.preview_path).name, "LoRA": r.preset.output.run_name},
                prompt_cond=cond, sample_kwargs=r.family.sample_kwargs, pipeline_guidance=r.family.pipeline_guidance)
            return [{**result, "preview": r.family.caps.preview_model} for result in results]
        finally:
            if swap is not None:
                swap.remove()
            pipe.transformer.to("cpu")


@contextlib.contextmanager
def training_denoiser_parked(r):
    """On a GPU, the training denoiser in CPU RAM while another transformer samples (its swapped blocks are there
    already), then back where it was."""
    from engine.models.block_swap import move_except_swapped

    if r.device != "cuda":
        yield
        return
    swap = r.comps.extra.get("block_swap")
    with torch.no_grad():
        for p in r.comps.denoiser.parameters():
            p.data = p.data.to("cpu")
    torch.cuda.empty_cache()
    try:
        yield
    finally:
        move_except_swapped(r.comps.denoiser, r.device, swap)


@contextlib.contextmanager
def vae_in_pipeline_dtype(r):
    """The pipelines decode with the VAE in the denoiser's dtype (SDXL's upcasts an fp16 VAE itself when its config
    says so); a VAE kept in fp32 for encoding (vae_fp32) joins that dtype while sampling, then goes back."""
    vae, dtype = r.comps.vae, r.comps.denoiser.dtype
    if vae.dtype == dtype:
        yield
        return
    vae.to(dtype)
    try:
        yield
    finally:
        vae.to(r.comps.vae_dtype)
