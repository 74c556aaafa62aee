"""Rollouts: images sampled with the current weights, with every step recorded for training.

    batch = roll_out(policy, cond, size_cond, noise, grid, generator, stochastic=True)
batch.latents [B, T + 1, ...] are the states x_T .. x_0 the sampler visited (on the device, fp32; [B, 1, ...],
x_0 alone, for the deterministic sampler),
batch.log_probs [B, T] the log-density of each drawn step (engine/rl/steps.py), batch.grid [T + 1] the noise
levels. GRPO trains on the recorded steps; NFT only needs the final x_0 (DiffusionNFT re-noises it), so its
rollouts can run the deterministic sampler (stochastic=False: eta 0 / the ODE's Euler step).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.rl.steps import gaussian_log_prob


@dataclass
class RolloutBatch:
    prompts: list[str]
    cond: dict                 # the prompts' text conditioning, one row per image
    size_cond: torch.Tensor | None
    latents: torch.Tensor      # [B, T + 1, ...]
    log_probs: torch.Tensor    # [B, T]
    grid: torch.Tensor         # [T + 1]
    images: list = field(default_factory=list)       # PIL images of latents[:, -1]
    rewards: torch.Tensor | None = None              # [B] the weighted total
    parts: dict = field(default_factory=dict)        # reward name -> [B] its unweighted scores
    advantages: torch.Tensor | None = None           # [B]


@torch.no_grad()
def roll_out(policy, prompts: list[str], cond: dict, size_cond, noise: torch.Tensor, grid: torch.Tensor,
             generator: torch.Generator, stochastic: bool = True) -> RolloutBatch:
    """Sample `noise` [B, ...] down the grid; the step noise comes from `generator` (the run's, so a rerun with the
    same seed rolls out the same images)."""
    x = noise.float()
    states, log_probs = [x], []
    t_max = float(grid[1]) if len(grid) > 1 else 1.0
    for j in range(len(grid) - 1):
        t = grid[j].expand(len(x))
        t_prev = grid[j + 1].expand(len(x))
        pred = policy.predict(x, t, cond, size_cond)
        if stochastic:
            mean, std = policy.step(x, pred, t, t_prev, t_max)
            x = mean + std * torch.randn(x.shape, generator=generator, device=x.device)
            log_probs.append(gaussian_log_prob(x, mean, std))
        else:
            x = deterministic_step(policy, x, pred, t, t_prev)
            log_probs.append(torch.zeros(len(x), device=x.device))
        states.append(x)
    if not stochastic:  # nothing trains on the path: keep x_0 alone (FLUX at 1024 px: ~50 MB an image saved)
        states = states[-1:]
    return RolloutBatch(prompts=prompts, cond=cond, size_cond=size_cond, latents=torch.stack(states, dim=1),
                        log_probs=torch.stack(log_probs, dim=1), grid=grid)


def deterministic_step(policy, x, pred, t, t_prev):
    """DDIM with eta 0 (the DDPM objectives) or the flow ODE's Euler step: the noise-free sampler."""
    from engine.rl.policy import x0_and_eps

    if policy.kind == "flow_sde":
        return x + (t_prev - t).reshape(-1, *([1] * (x.dim() - 1))) * pred
    x0, eps = x0_and_eps(policy.objective, x, pred, t)
    a_prev, s_prev = (v.reshape(-1, *([1] * (x.dim() - 1))) for v in policy.objective.alpha_sigma(t_prev))
    return a_prev * x0 + s_prev * eps


DECODE_CHUNK = 4  # images through the VAE at once: a whole rollout batch at 1024 px would not fit beside the model


@torch.no_grad()
def decode(family, comps, latents: torch.Tensor) -> list:
    """Latents in the denoiser's space -> PIL images (the family's decode_image, else the VAE's decoder)."""
    if len(latents) > DECODE_CHUNK:
        return [image for k in range(0, len(latents), DECODE_CHUNK)
                for image in decode(family, comps, latents[k:k + DECODE_CHUNK])]
    from PIL import Image

    if family.decode_image is not None:
        pixels = family.decode_image(comps, latents)
    else:
        vae = comps.vae
        scaled = latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
        pixels = vae.decode(scaled.to(vae.device, vae.dtype), return_dict=False)[0]
    pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]
