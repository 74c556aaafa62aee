"""The rollout samplers' steps: the recorded log-probability is the density of the Gaussian the step draws from;
DDIM's step is diffusers' DDIM (eta 0) and its noise is DDPM's posterior (eta 1); Flow-GRPO's SDE has the flow
ODE as its noise-free limit; a rollout's recorded steps re-evaluate to the same log-probabilities."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from engine.models.families import capabilities
from engine.rl.policy import Policy, time_grid, x0_and_eps
from engine.rl.rollout import roll_out
from engine.rl.steps import ddim_std, ddim_step, flow_sde_std, flow_sde_step, gaussian_log_prob
from engine.training.objectives import ddpm_alphas_cumprod, make_objective

g = torch.Generator().manual_seed(0)


def test_log_prob_is_the_gaussian_density_averaged_per_image():
    mean, std = torch.randn(3, 4, 5, 5, generator=g), torch.rand(3, 1, 1, 1, generator=g) + 0.2
    x = mean + std * torch.randn(mean.shape, generator=g)
    expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).mean(dim=(1, 2, 3))
    assert torch.allclose(gaussian_log_prob(x, mean, std), expected, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_step_with_eta_0_is_diffusers_ddim_and_eta_1_has_ddpm_posterior_variance(prediction):
    from diffusers import DDIMScheduler

    acp = ddpm_alphas_cumprod(1000, "scaled_linear", 0.00085, 0.012)  # SD's schedule
    objective = make_objective(prediction, acp)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction, clip_sample=False, timestep_spacing="trailing",
                              set_alpha_to_one=False)
    scheduler.set_timesteps(10)
    k, k_prev = int(scheduler.timesteps[3]), int(scheduler.timesteps[4])
    x, pred = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=g,
                                                                                    dtype=torch.float64)
    t, t_prev = torch.full((2,), k / 999, dtype=torch.float64), torch.full((2,), k_prev / 999, dtype=torch.float64)
    x0, eps = x0_and_eps(objective, x, pred, t)
    a_t, s_t = objective.alpha_sigma(t)
    a_prev, s_prev = objective.alpha_sigma(t_prev)
    mean, std = ddim_step(x0, eps, a_t.double(), s_t.double(), a_prev.double(), s_prev.double(), eta=0.0)
    expected = scheduler.step(pred.float(), k, x.float(), eta=0.0).prev_sample
    assert std.abs().max() == 0 and torch.allclose(mean.float(), expected, atol=1e-4)
    var = ddim_std(a_t.double(), s_t.double(), a_prev.double(), s_prev.double(), 1.0) ** 2
    acp_t, acp_prev = acp[k].double(), acp[k_prev].double()
    assert torch.allclose(var, (1 - acp_prev) / (1 - acp_t) * (1 - acp_t / acp_prev), rtol=1e-4)


def test_flow_sde_without_noise_is_the_ode_euler_step_and_its_std_is_flow_grpos():
    x, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, t_prev = torch.full((2,), 0.6), torch.full((2,), 0.5)
    mean, std = flow_sde_step(x, v, t, t_prev, t_max=0.9, noise_level=1e-8)
    assert torch.allclose(mean, x + (t_prev - t).reshape(-1, 1, 1, 1) * v, atol=1e-6) and std.max() < 1e-7
    _, std = flow_sde_step(x, v, t, t_prev, t_max=0.9, noise_level=0.7)
    assert torch.allclose(std.flatten(), 0.7 * torch.sqrt(torch.tensor(0.6 / 0.4)) * torch.sqrt(torch.tensor(0.1)))
    # at t = 1, 1 - t is 0: the grid's second point stands in for t (Flow-GRPO's sigma_max)
    assert torch.allclose(flow_sde_std(torch.ones(1), 0.9, 0.7), 0.7 * torch.sqrt(torch.tensor(1 / 0.1)))


def test_a_flow_sde_step_keeps_the_marginal_of_the_straight_path():
    """For data x0 = 0 the exact velocity is v = x_t / t and x_t ~ N(0, t^2): a step to t_prev lands on a Gaussian
    whose std is t_prev up to the discretisation, which shrinks with the square of the step (the SDE's marginals
    are the ODE's)."""
    t = 0.8
    errors = []
    for dt in (0.1, 0.01):
        one, tt, tp = (torch.ones(1, 1, dtype=torch.float64), torch.full((1,), t, dtype=torch.float64),
                       torch.full((1,), t - dt, dtype=torch.float64))
        mean, std = flow_sde_step(one, one / t, tt, tp, t_max=0.95, noise_level=0.7)  # mean = c x, linear in x
        landed = torch.sqrt(mean ** 2 * t ** 2 + std ** 2)  # Var(c x + std z) = c^2 t^2 + std^2
        errors.append(abs(float(landed) / (t - dt) - 1))
    assert errors[1] < 1e-3 and errors[1] < errors[0] / 50, errors


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))


@pytest.mark.parametrize("objective_name", ["epsilon", "flow"])
def test_a_recorded_rollout_step_re_evaluates_to_its_log_prob(objective_name):
    """What GRPO relies on: the rollout's log-probabilities are what the same weights give for the recorded
    steps (so the first ratio of an epoch is exactly 1)."""
    from types import SimpleNamespace

    objective = make_objective(objective_name, ddpm_alphas_cumprod(1000, "scaled_linear"))
    model = Linear()
    family = SimpleNamespace(name="dit", caps=capabilities("dit"), predict=lambda comps, x, t, cond, size: model.w * x + cond["c"])
    policy = Policy(family, SimpleNamespace(extra={}), objective, 1.0, "flow_sde" if objective_name == "flow"
                    else "ddim", 1.0, 0.7, torch.float32)
    cond = {"c": torch.randn(3, 1, 4, 4, generator=g)}
    grid = time_grid(objective, capabilities("dit"), 6, 16, "cpu")
    batch = roll_out(policy, ["a"] * 3, cond, None, torch.randn(3, 1, 4, 4, generator=g), grid, g)
    assert batch.latents.shape == (3, 7, 1, 4, 4) and batch.log_probs.shape == (3, 6)
    for j in range(6):
        t, t_prev = grid[j].expand(3), grid[j + 1].expand(3)
        x = batch.latents[:, j]
        mean, std = policy.step(x, policy.predict(x, t, cond), t, t_prev, float(grid[1]))
        assert torch.allclose(gaussian_log_prob(batch.latents[:, j + 1], mean, std), batch.log_probs[:, j],
                              atol=1e-5)
