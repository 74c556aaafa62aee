"""One stochastic sampler step whose transition probability is known: what a rollout records and GRPO trains on.

Both steps give the Gaussian x_prev ~ N(mean, std^2) that x_t moves to, `mean` differentiable in the model's
prediction; a rollout draws x_prev = mean + std noise, and gaussian_log_prob() is its log-density, averaged over the
non-batch dimensions (so a 512 px and a 1024 px image weigh the same in the loss). Training re-evaluates the same
step with the current weights on the recorded x_prev.

    ddim_step(x0_hat, eps_hat, a_t, s_t, a_prev, s_prev, eta) -> (mean, std)   DDIM with eta > 0, any x_t = a x0 + s eps
    flow_sde_step(x, v, t, t_prev, t_max, noise_level) -> (mean, std)          Flow-GRPO's SDE form of the flow ODE

DDIM (Song et al. 2021; as DDPO uses it: kvablack/ddpo-pytorch, diffusers_patch/ddim_with_logprob.py): the step
    mean = a_prev x0_hat + sqrt(s_prev^2 - std^2) eps_hat,   std^2 = eta^2 s_prev^2 (1 - (a_t s_prev)^2 / (a_prev s_t)^2)
which for a variance-preserving schedule (a^2 = alphas_cumprod) is DDIM's (1 - acp')/(1 - acp) (1 - acp/acp'),
and stays a valid posterior for any (a, s) path, so the same step serves epsilon, v and flow-path objectives.

Flow SDE (Liu et al. 2025, Flow-GRPO: yifan123/flow_grpo, diffusers_patch/sd3_sde_with_logprob.py): the reverse
SDE with the same marginals as the ODE dx = v dt on x_t = (1 - t) x0 + t eps, with diffusion std_t =
noise_level sqrt(t / (1 - t)):
    mean = x (1 + std_t^2 / (2t) dt) + v (1 + std_t^2 (1 - t) / (2t)) dt,   dt = t_prev - t < 0
    x_prev = mean + std_t sqrt(-dt) noise
At t = 1 (the first step) 1 - t is 0: t_max, the grid's second point, stands in for it as Flow-GRPO does.
"""
from __future__ import annotations

import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_sample(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] value shaped [B, 1, 1, ...] to broadcast against `like`."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2) per element, averaged over every dimension but the batch: [B]."""
    std = std.expand_as(mean) if std.dim() else std
    density = -((x.detach() - mean) ** 2) / (2 * std ** 2) - torch.log(std) - LOG_SQRT_2PI
    return density.mean(dim=tuple(range(1, x.dim())))


def ddim_std(a_t, s_t, a_prev, s_prev, eta: float):
    """DDIM's eta-scaled posterior std (see the module docstring); 0 at the last step (s_prev = 0)."""
    ratio = (a_t * s_prev) / (a_prev * s_t)
    return eta * s_prev * torch.sqrt(torch.clamp(1 - ratio ** 2, min=0.0))


def ddim_step(x0_hat, eps_hat, a_t, s_t, a_prev, s_prev, eta: float):
    """(mean, std [B,1,..]) of the step; a_*, s_* are [B] or scalars."""
    a_t, s_t, a_prev, s_prev = (_per_sample(v, x0_hat) for v in (a_t, s_t, a_prev, s_prev))
    std = ddim_std(a_t, s_t, a_prev, s_prev, eta)
    mean = a_prev * x0_hat + torch.sqrt(torch.clamp(s_prev ** 2 - std ** 2, min=0.0)) * eps_hat
    return mean, std


def flow_sde_std(t, t_max, noise_level: float):
    """Flow-GRPO's diffusion std_t = noise_level sqrt(t / (1 - t)), with t_max for t = 1."""
    one_minus = 1 - torch.where(t >= 1, torch.as_tensor(t_max, dtype=t.dtype, device=t.device), t)
    return noise_level * torch.sqrt(t / one_minus)


def flow_sde_step(x, v, t, t_prev, t_max: float, noise_level: float):
    """(mean, std [B,1,..]) of one SDE step from t to t_prev (t, t_prev [B] or scalars)."""
    t, t_prev = _per_sample(t, x), _per_sample(t_prev, x)
    dt = t_prev - t
    std_t = flow_sde_std(t, t_max, noise_level)
    mean = x * (1 + std_t ** 2 / (2 * t) * dt) + v * (1 + std_t ** 2 * (1 - t) / (2 * t)) * dt
    return mean, std_t * torch.sqrt(-dt)
