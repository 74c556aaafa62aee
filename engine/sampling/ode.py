"""Samplers for models trained from scratch (no diffusers pipeline): ODE solvers for flow models, DDIM / DDPM for
DDPM models. Both call the model in Easel's convention, the one it was trained in (engine/training/objectives.py):
t in [0, 1] is the noise level, [B], and the model's output is what its objective's `target` was.

    sample_flow(velocity, noise, method, steps, atol, rtol) -> x0
        velocity(x_t, t) = d x_t / d t; integrates from t = 1 (noise) to t = 0: euler / midpoint / rk4 through
        flow_matching's ODESolver, dopri5 through torchdiffeq (see sample_flow for why).
    sample_ddpm(model, noise, schedule, prediction_type, method, steps, eta, generator) -> x0
        model(x_t, t) with t = k / (N - 1) on the training grid; steps through diffusers' DDIM / DDPM scheduler.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from engine.registry import choose

# sampling.sampler -> fixed (`steps` equal steps) or adaptive (atol / rtol); the names are torchdiffeq's methods
ODE_METHODS = {"euler": "fixed", "midpoint": "fixed", "rk4": "fixed", "dopri5": "adaptive"}
# sampling.sampler -> diffusers scheduler class
DDPM_METHODS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}


def sample_flow(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                method: str = "euler", steps: int = 20, atol: float = 1e-5, rtol: float = 1e-5) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 1 (x = noise [B, ...]) down to t = 0; returns x at t = 0.

    velocity(x [B, ...], t [B]) -> [B, ...] is the model's output in Easel's convention (the flow objectives'
    target, d x_t / d t). method: euler / midpoint / rk4 take `steps` equal steps (1, 2, 4 model calls each);
    dopri5 picks its own steps to meet atol / rtol and ignores `steps`. Runs without gradients.

    No time conversion is needed here: a descending time grid makes torchdiffeq integrate backwards, so Easel's t
    is the solver's t. The fixed grid is given as points (linspace), not as step_size, so `steps` is exactly the
    number of steps (torchdiffeq's step_size grid can add a zero-length one).
    """
    kind = choose(ODE_METHODS, method, "sampling.sampler")

    def field(t, x):
        # the solver gives one scalar time; the model wants one per sample
        return velocity(x, t.to(x.dtype).expand(x.shape[0]))

    if kind == "fixed":
        from flow_matching.solver import ODESolver

        if steps < 1:
            raise ValueError(f"sampling.steps: {steps} must be at least 1 for {method}")
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=noise.dtype, device=noise.device)
        solver = ODESolver(velocity_model=lambda x, t: field(t, x))
        return solver.sample(x_init=noise, step_size=None, method=method, time_grid=grid)
    # dopri5 through torchdiffeq itself: ODESolver passes no solver options, and without step_t the adaptive
    # solver steps past the end and interpolates back, calling the model at noise levels below 0 (t = -0.2 seen
    # in a test), where it was never trained. step_t = [0] makes the last step land on t = 0.
    from torchdiffeq import odeint

    grid = torch.tensor([1.0, 0.0], dtype=noise.dtype, device=noise.device)
    with torch.no_grad():
        return odeint(field, noise, grid, method=method, atol=atol, rtol=rtol, options={"step_t": grid[1:]})[-1]


def ddpm_scheduler(schedule, method: str = "ddim", prediction_type: str = "epsilon"):
    """A diffusers DDIMScheduler / DDPMScheduler for a model trained on `schedule`.

    schedule: the objective's alphas_cumprod [N] (given to diffusers as the betas that make it), or a scheduler
    config dict (num_train_timesteps, beta_schedule, ...). Always set: prediction_type; timestep_spacing "trailing",
    so the first step is at k = N - 1, the pure noise a sample starts from (diffusers' default "leading" starts a
    1-step run at k = 0); clip_sample off (latents and most data are not in [-1, 1])."""
    import diffusers

    cls = getattr(diffusers, choose(DDPM_METHODS, method, "sampling.sampler"))
    if isinstance(schedule, dict):
        config = dict(schedule)
    else:
        acp = torch.as_tensor(schedule, dtype=torch.float64)
        betas = 1 - acp / torch.cat([acp.new_ones(1), acp[:-1]])
        config = {"num_train_timesteps": len(acp), "trained_betas": betas.tolist()}
    config.update(prediction_type=prediction_type, timestep_spacing="trailing", clip_sample=False)
    return cls.from_config(config)


def sample_ddpm(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, schedule,
                prediction_type: str = "epsilon", method: str = "ddim", steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoise `noise` [B, ...] in `steps` steps; returns x0 [B, ...]. Runs without gradients.

    model(x_t [B, ...], t [B]) -> [B, ...] predicts prediction_type (epsilon / v_prediction / sample) at the noise
    level t = k / (N - 1): the grid Easel's DDPM objectives train on (Epsilon.index), so a family's predict (which
    turns t back into round(t (N - 1))) is called as in training. schedule: as ddpm_scheduler. method ddim: eta 0 is
    deterministic, eta 1 adds DDPM-like noise; ddpm: ancestral sampling (eta does not apply). generator: the noise
    those steps add."""
    scheduler = ddpm_scheduler(schedule, method, prediction_type)
    scheduler.set_timesteps(steps, device=noise.device)
    last = scheduler.config.num_train_timesteps - 1
    extra = {"eta": eta} if method == "ddim" else {}
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for k in scheduler.timesteps:
            t = (k.double() / last).to(x.dtype).expand(x.shape[0])
            x = scheduler.step(model(x, t), k, x, generator=generator, **extra).prev_sample
    return x
