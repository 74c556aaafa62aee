"""The two RL objectives, as the RL guide states them, on plain tensors (no model in here: tests check them
against the formulas).

GRPO (the guide's "GRPO 训练器"; PPO's clipped objective as DDPO and Flow-GRPO use it):
    ratio = exp(log_prob - old_log_prob)
    loss  = mean(max(-A ratio, -A clamp(ratio, 1 - clip_range, 1 + clip_range))) + kl_beta KL
with A the advantage clipped to +-adv_clip_max, old_log_prob what the rollout recorded, and KL the KL divergence
between this step's Gaussian under the current weights and under the reference (the model without its LoRA):
two Gaussians of one std, so mean((mean - mean_ref)^2) / (2 std^2).

DiffusionNFT (the guide's "DiffusionNFT 训练器"; Zheng et al. 2025, NVlabs/DiffusionNFT):
    positive = beta v + (1 - beta) v_old,   negative = (1 + beta) v_old - beta v
    x0+ / x0- = the clean images the positive / negative predictions imply
    weight    = mean |x0_pred - x0| per image (detached: the adaptive weight)
    loss      = mean(r L+ / beta + (1 - r) L- / beta) + kl_beta mean((v - v_ref)^2),   L = mean((x0_pred - x0)^2 / weight)
with r in [0, 1] from the advantage (nft_r) and v_old the old model's prediction. DiffusionNFT's code also multiplies
the policy term by adv_clip_max; the guide's formula has no such factor, and neither does this (it only rescales the
learning rate).
"""
from __future__ import annotations

import torch


def _mean_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def clip_advantages(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    return advantages.clamp(-adv_clip_max, adv_clip_max)


def grpo_loss(log_prob, old_log_prob, advantages, clip_range: float, adv_clip_max: float, kl_beta: float = 0.0,
              mean=None, mean_ref=None, std=None) -> dict:
    """{"loss", "policy_loss", "kl", "clip_frac", "approx_kl"} for one step of a batch of trajectories.
    log_prob, old_log_prob, advantages: [B]; mean, mean_ref, std: the step's Gaussians (needed when kl_beta > 0)."""
    a = clip_advantages(advantages, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1 - clip_range, 1 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    kl = torch.zeros((), device=log_prob.device)
    if kl_beta > 0:
        kl = (_mean_per_sample((mean - mean_ref) ** 2) / (2 * std.flatten(1)[:, 0] ** 2)).mean()
    return {"loss": policy_loss + kl_beta * kl, "policy_loss": policy_loss.detach(), "kl": kl.detach(),
            "clip_frac": ((ratio - 1).abs() > clip_range).float().mean().detach(),
            "approx_kl": (0.5 * (log_prob - old_log_prob) ** 2).mean().detach()}


def nft_r(advantages: torch.Tensor, adv_mode: str, adv_clip_max: float) -> torch.Tensor:
    """The positive share r in [0, 1] of each image (DiffusionNFT): the clipped advantage, shaped by adv_mode, mapped
    from [-adv_clip_max, adv_clip_max] to [0, 1]. one_only gives r = 1 for a positive advantage and 0 otherwise, as the
    guide describes it (DiffusionNFT's code maps its 1 / 0 through the same scaling as the others)."""
    a = clip_advantages(advantages, adv_clip_max)
    if adv_mode == "one_only":
        return (a > 0).to(a.dtype)
    if adv_mode == "positive_only":
        a = a.clamp(min=0)
    elif adv_mode == "negative_only":
        a = a.clamp(max=0)
    elif adv_mode == "binary":
        a = torch.sign(a) * adv_clip_max
    elif adv_mode != "normal":
        raise ValueError(f"rl.adv_mode: {adv_mode!r} is not one of normal, positive_only, negative_only, one_only, "
                         f"binary")
    return (a / adv_clip_max / 2 + 0.5).clamp(0, 1)


def nft_loss(pred, old_pred, x_t, x0, to_x0, r, beta: float, kl_beta: float = 0.0, ref_pred=None) -> dict:
    """{"loss", "policy_loss", "kl", "positive_loss", "negative_loss"}. pred: the current model's prediction (with
    gradients), old_pred / ref_pred: the old and reference models' (no gradients); to_x0(x_t, prediction) -> the clean
    image it implies (x_t - t v for a flow); r: [B] from nft_r."""
    old_pred = old_pred.detach()
    positive = beta * pred + (1 - beta) * old_pred
    negative = (1 + beta) * old_pred - beta * pred
    losses = {}
    for name, prediction in (("positive", positive), ("negative", negative)):
        x0_pred = to_x0(x_t, prediction)
        with torch.no_grad():  # the adaptive weight: how far off this image is, so every image weighs alike
            weight = (x0_pred.double() - x0.double()).abs().flatten(1).mean(1).clamp(min=1e-5)
        losses[name] = _mean_per_sample((x0_pred - x0) ** 2) / weight.to(x0_pred.dtype)
    policy_loss = (r * losses["positive"] / beta + (1 - r) * losses["negative"] / beta).mean()
    kl = torch.zeros((), device=pred.device)
    if kl_beta > 0:
        kl = _mean_per_sample((pred - ref_pred.detach()) ** 2).mean()
    return {"loss": policy_loss + kl_beta * kl, "policy_loss": policy_loss.detach(), "kl": kl.detach(),
            "positive_loss": losses["positive"].mean().detach(), "negative_loss": losses["negative"].mean().detach()}


# decay_type -> (steps the old model is copied, rise of the kept share per step, the kept share's ceiling):
# DiffusionNFT's return_decay schedules for 1 and 2; 0 keeps the old model fixed, as the guide says
OLD_MODEL_DECAY = {1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}


def old_model_decay(step: int, decay_type: int) -> float:
    """The share of the old model kept when it follows the current one: old <- d old + (1 - d) current.
    1.0 for decay_type 0 (fixed)."""
    if decay_type == 0:
        return 1.0
    flat, rise, ceiling = OLD_MODEL_DECAY[decay_type]
    return 0.0 if step < flat else min((step - flat) * rise, ceiling)
