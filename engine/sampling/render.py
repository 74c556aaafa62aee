"""Sample images during and after training: each prompt at each LoRA strength, with A1111-readable PNG metadata.

Strength 0 renders the base model with the same seed, so the sample grid shows what the LoRA changes. Sampling
mid-training leaves the training state alone: the global RNG (resume must be exact), train/eval modes, which
adapters are active and which parameters are trainable are all as before.
"""
from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path

import torch

from engine.sampling.samplers import A1111_SAMPLER_NAMES, set_sampler

TEXT_SEQUENCE_TOKENS = 77  # T5 prompt length for FLUX samples; the pipeline default (512) is slow and unneeded


def sample_images(pipeline, prompts: list[str], negative_prompt: str, seed: int, steps: int, guidance: float,
                  width: int, height: int, strengths: list[float], out_dir: Path, step: int,
                  extra_info: dict | None = None, sampler: str | None = None,
                  max_sequence_length: int = TEXT_SEQUENCE_TOKENS, prompt_cond: dict | None = None,
                  sample_kwargs=None, file_prefix: str = "", pipeline_guidance=None) -> list[dict]:
    """Render every prompt at every LoRA strength into `out_dir`; one dict per image (path, prompt, strength, step).

    Prompt i uses seed `seed + i` at every strength, so images of one prompt differ only by the LoRA.
    Files: `step{step:06d}_p{i:02d}_s{strength:.2f}.png` (sorts by step, then prompt, then strength).
    `extra_info` ({"Model": ..., "LoRA": ...}) is added to the PNG's A1111 `parameters` text.
    `prompt_cond` ({prompt: encode_text's output for it}, the negative prompt's too) gives the prompts already
    encoded, so the text encoders (T5: 9.5 GB) need not come back to the GPU for samples; the family's
    `sample_kwargs(cond, negative cond, device)` turns them into the pipeline's arguments.
    `file_prefix` starts the file names (the preview model's samples: "preview_"). `guidance` is classifier-free
    guidance as A1111 and ComfyUI mean it (1 = none); `pipeline_guidance(guidance)` is the value the pipeline takes
    when its own scale means something else (ZImagePipeline: 0 = none).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sampler:
        set_sampler(pipeline, sampler)
    sampler_name = sampler or type(pipeline.scheduler).__name__
    accepted = inspect.signature(pipeline.__call__).parameters
    results = []
    with _training_state_preserved(pipeline):
        for i, prompt in enumerate(prompts):
            for strength in strengths:
                kwargs = dict(prompt=prompt, num_inference_steps=steps, width=width,
                              guidance_scale=pipeline_guidance(guidance) if pipeline_guidance else guidance,
                              height=height, generator=torch.Generator("cpu").manual_seed(seed + i))
                if prompt_cond and prompt in prompt_cond and sample_kwargs is not None:
                    kwargs.pop("prompt")
                    kwargs.update(sample_kwargs(prompt_cond[prompt], prompt_cond.get(negative_prompt),
                                                pipeline.transformer.device))
                elif negative_prompt and "negative_prompt" in accepted:
                    kwargs["negative_prompt"] = negative_prompt
                if "max_sequence_length" in accepted:  # T5-conditioned pipelines (FLUX)
                    kwargs["max_sequence_length"] = max_sequence_length
                with lora_strength(pipeline, strength):
                    image = pipeline(**kwargs).images[0]
                path = out_dir / f"{file_prefix}step{step:06d}_p{i:02d}_s{strength:.2f}.png"
                settings = {"Steps": steps, "Sampler": A1111_SAMPLER_NAMES.get(sampler_name, sampler_name),
                            "CFG scale": guidance, "Seed": seed + i, "Size": f"{width}x{height}",
                            "LoRA strength": strength, "Training step": step, **(extra_info or {})}
                _save_png(image, path, prompt, negative_prompt, settings)
                results.append({"path": str(path), "prompt": prompt, "strength": strength, "step": step})
    return results


def save_samples(images: list, prompts: list[str], sampling, size: tuple[int, int], out_dir: Path, step: int,
                 extra_info: dict | None = None) -> list[dict]:
    """PNGs of images a family rendered itself (one per prompt, strength 1: no LoRA), named and described as
    sample_images names them; one dict per image (path, prompt, strength, step)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        path = out_dir / f"step{step:06d}_p{i:02d}_s1.00.png"
        settings = {"Steps": sampling.steps, "Sampler": sampling.sampler, "Seed": sampling.seed + i,
                    "Size": f"{size[0]}x{size[1]}", "Training step": step, **(extra_info or {})}
        _save_png(image, path, prompt, "", settings)
        results.append({"path": str(path), "prompt": prompt, "strength": 1.0, "step": step})
    return results


@contextlib.contextmanager
def lora_strength(pipeline, strength: float):
    """Scale every LoRA layer of the pipeline by `strength` (0 = base model), restoring the exact scales after.

    Scaling peft's per-layer `scaling` directly works for adapters added for training and for loaded files, on any
    denoiser and text encoder, and unlike `set_adapters` it does not touch which parameters are trainable.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for component in _components(pipeline) for m in component.modules() if isinstance(m, LoraLayer)]
    saved = [dict(layer.scaling) for layer in layers]
    try:
        for layer in layers:
            for adapter in layer.scaling:
                layer.scaling[adapter] *= strength
        yield
    finally:
        for layer, scaling in zip(layers, saved):
            layer.scaling.clear()
            layer.scaling.update(scaling)


@contextlib.contextmanager
def _training_state_preserved(pipeline):
    """eval() for sampling (LoRA dropout off), then restore train modes and the global RNG streams."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), eval_mode(_components(pipeline)):
        yield


@contextlib.contextmanager
def eval_mode(modules):
    """Every module (and submodule) in eval mode, then each back in the exact mode it had (LoRA dropout off for
    samples and validation, without touching the frozen parts' own modes)."""
    modes = [{name: m.training for name, m in c.named_modules()} for c in modules]
    try:
        for c in modules:
            c.eval()
        yield
    finally:
        for c, mode in zip(modules, modes):
            for name, m in c.named_modules():
                m.training = mode.get(name, m.training)


def _components(pipeline) -> list[torch.nn.Module]:
    return [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]


def _save_png(image, path: Path, prompt: str, negative_prompt: str, settings: dict) -> None:
    """PNG with A1111's `parameters` text (its PNG Info tab and civitai read it) and the same data as JSON."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(prompt, negative_prompt, settings))
    info.add_text("easel", json.dumps({"prompt": prompt, "negative_prompt": negative_prompt, **settings},
                                      ensure_ascii=False, default=str))
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)  # the GUI's gallery never shows a half-written PNG


def a1111_parameters(prompt: str, negative_prompt: str, settings: dict) -> str:
    """A1111's text: prompt, `Negative prompt: …` line, then `Key: value, …` (values with , or : JSON-quoted)."""
    def value(v):
        text = f"{v:g}" if isinstance(v, float) else str(v)
        return json.dumps(text, ensure_ascii=False) if ("," in text or ":" in text or "\n" in text) else text

    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {value(v)}" for k, v in settings.items()))
    return "\n".join(lines)
