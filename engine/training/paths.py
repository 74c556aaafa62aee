"""The probability paths of the `flow-matching` package (facebookresearch/flow_matching; Lipman et al. 2024):
condot, cosine, vp, linear_vp, in Easel's time convention. objectives.PathFlow trains on them.

Two time conventions meet here, and `from_library` below is the only place they are converted:

    Easel     t in [0, 1] is the noise level: x_t = x0 at t = 0, pure noise at t = 1. A flow objective's target is
              the velocity d x_t / d t, so a sampler integrates dx/dt = model(x, t) from t = 1 down to 0.
    library   s in [0, 1] runs from the source (noise, its `x_0`) at s = 0 to the data (its `x_1`) at s = 1:
              X_s = alpha_s x_1 + sigma_s x_0, and its velocity dX_s/ds points towards the data.

    s = 1 - t,   library x_1 = Easel x0 (data),   library x_0 = noise,   Easel target = d x/dt = -dX_s/ds.

With CondOTScheduler (alpha_s = s, sigma_s = 1 - s) that is x_t = (1 - t) x0 + t noise, target = noise - x0: the
`Flow` objective (make_objective keeps returning `Flow` itself for condot; the tests check the two agree).
"""
from __future__ import annotations

import torch

from engine.registry import choose

# training.flow_path -> the scheduler class in flow_matching.path.scheduler
FLOW_PATHS = {"condot": "CondOTScheduler", "cosine": "CosineScheduler", "vp": "VPScheduler",
              "linear_vp": "LinearVPScheduler"}


def from_library(path, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) in Easel's convention from the library's `path.sample` (see the module docstring).

    x0, noise [B, ...]; t [B], Easel's noise level. The library's time is s = 1 - t, and its velocity dX/ds is
    negated because Easel's t runs the other way (dx/dt = dX/ds * ds/dt, ds/dt = -1)."""
    sample = path.sample(x_0=noise, x_1=x0, t=1 - t)
    return sample.x_t, -sample.dx_t


def make_path(flow_path: str):
    """The library's AffineProbPath for training.flow_path (its schedulers' own defaults, e.g. VP beta 0.1 .. 20)."""
    import flow_matching.path.scheduler as schedulers
    from flow_matching.path import AffineProbPath

    scheduler = getattr(schedulers, choose(FLOW_PATHS, flow_path, "training.flow_path"))
    return AffineProbPath(scheduler())
