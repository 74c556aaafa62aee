"""Samples from a model trained from scratch (the DiT: caps.base_model False), which has no diffusers pipeline:
the family's predict, called in Easel's convention, integrated by engine/sampling/ode.py.

    render(family, comps, prompts, sampling, seed, size) -> [PIL image]   one per prompt, prompt i from seed + i
The objective (comps.extra["objective"]) picks the sampler: flow objectives sample_flow (sampling.sampler euler /
midpoint / rk4 / dopri5; default euler), the DDPM ones sample_ddpm (ddim with sampling.ddim_eta, or ddpm; default
ddim) on comps.alphas_cumprod. family.decode_image turns the result into pixels (the DiT's VAE in space latent).
"""
from __future__ import annotations

import torch

from engine.sampling.ode import sample_ddpm, sample_flow


@torch.no_grad()
def render(family, comps, prompts: list[str], sampling, seed: int, size: tuple[int, int]) -> list:
    """One PIL image per prompt (the DiT's class name, or any text for conditioning none), size = (w, h) px.
    sampling: the preset's sampling section (sampler, steps, ddim_eta, atol, rtol)."""
    from PIL import Image

    objective = comps.extra["objective"]
    denoiser = comps.denoiser
    device, dtype = denoiser.device, denoiser.dtype
    channels, down = denoiser.config.in_channels, comps.extra.get("downscale", 1)  # latents: 8x smaller sides
    cond = family.encode_text(comps, prompts)
    images = []
    was_training = denoiser.training
    denoiser.eval()  # the DiT's label dropout off
    try:
        for i in range(len(prompts)):
            g = torch.Generator("cpu").manual_seed(seed + i)
            noise = torch.randn(1, channels, size[1] // down, size[0] // down, generator=g).to(device, dtype)
            one = {k: v[i:i + 1] for k, v in cond.items()}
            model = lambda x, t: family.predict(comps, x, t, one, None).to(x.dtype)  # noqa: E731
            if objective.name == "flow":
                method = "euler" if sampling.sampler == "default" else sampling.sampler
                x0 = sample_flow(model, noise, method, sampling.steps, sampling.atol, sampling.rtol)
            else:
                method = "ddim" if sampling.sampler == "default" else sampling.sampler
                x0 = sample_ddpm(model, noise, comps.alphas_cumprod, objective.name, method, sampling.steps,
                                 sampling.ddim_eta, generator=g)
            x0 = family.decode_image(comps, x0) if family.decode_image else x0
            pixels = ((x0[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            images.append(Image.fromarray(pixels))
    finally:
        denoiser.train(was_training)
    return images
