"""engine/sampling/ode.py against closed forms: ODE solvers on flows whose solution is known, DDIM / DDPM through
diffusers' schedulers with a perfect predictor (t in [0, 1] is the noise level; sampling runs from t = 1 to 0)."""
import math

import pytest
import torch

from engine.sampling.ode import sample_ddpm, sample_flow
from engine.training.objectives import ddpm_alphas_cumprod, make_objective
from engine.training.paths import FLOW_PATHS

MU, S = 2.0, 0.5   # the data: N(MU, S^2) per coordinate


def gaussian_velocity(x, t):
    """The exact marginal velocity of the straight (condot / Flow) path from N(0, 1) at t = 1 to N(MU, S^2) at t = 0:
    x_t = (1 - t) MU + sd_t z, sd_t^2 = (1 - t)^2 S^2 + t^2, so dx/dt = -MU + sd_t'/sd_t (x - (1 - t) MU)."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    var = (1 - t) ** 2 * S ** 2 + t ** 2
    return -MU + (t - (1 - t) * S ** 2) / var * (x - (1 - t) * MU)


def _noise(seed=0, dtype=torch.float64):
    return torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _error(method, steps, **tol):
    noise = _noise()
    return (sample_flow(gaussian_velocity, noise, method, steps, **tol) - (MU + S * noise)).abs().max().item()


def test_euler_error_rises_with_step_size_at_first_order():
    errors = [_error("euler", n) for n in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2]
    assert 2.5 < errors[1] / errors[2] < 6       # ~4x for 4x the steps: first order
    assert errors[2] < 0.05


def test_midpoint_and_rk4_converge_faster_and_dopri5_meets_its_tolerance():
    assert _error("midpoint", 16) < _error("euler", 16) / 5
    rk4 = [_error("rk4", n) for n in (4, 8, 16)]
    assert rk4[0] > rk4[1] > rk4[2] and rk4[1] / rk4[2] > 8     # ~16x for 2x the steps: fourth order
    assert rk4[2] < 1e-4
    loose, tight = _error("dopri5", 0, atol=1e-3, rtol=1e-3), _error("dopri5", 0, atol=1e-9, rtol=1e-9)
    assert tight < 1e-6 and tight < loose


@pytest.mark.parametrize("method,stages,growth", [
    ("euler", 1, lambda z: 1 + z),
    ("midpoint", 2, lambda z: 1 + z + z ** 2 / 2),
    ("rk4", 4, lambda z: 1 + z + z ** 2 / 2 + z ** 3 / 6 + z ** 4 / 24),
])
def test_fixed_steps_on_a_linear_ode_are_exactly_n_steps_of_the_method(method, stages, growth):
    # dx/dt = a x from t = 1 to 0: x(0) = x(1) e^-a; one step of size -h multiplies x by the method's polynomial in
    # z = -a h, so the result after n steps is exact to rounding, and tells the grid and the step count
    a, n, calls = 1.3, 7, []
    noise = _noise(1)

    def velocity(x, t):
        calls.append(t)
        return a * x

    out = sample_flow(velocity, noise, method, n)
    assert torch.allclose(out, noise * growth(-a / n) ** n, rtol=1e-12)
    assert abs(growth(-a / n) ** n - math.exp(-a)) < (0.1 if method == "euler" else 0.01)
    assert len(calls) == stages * n
    assert all(c.shape == (5,) for c in calls) and torch.equal(calls[0], torch.ones(5, dtype=torch.float64))
    assert min(c.min().item() for c in calls) >= 0


def test_dopri5_never_asks_the_model_below_noise_level_zero():
    seen = []

    def velocity(x, t):
        seen.append(t.min().item())
        return gaussian_velocity(x, t)

    sample_flow(velocity, _noise(), "dopri5", atol=1e-6, rtol=1e-6)
    assert min(seen) >= 0 and max(seen) == 1


def path_gaussian_velocity(obj):
    """The exact marginal velocity of obj's path (x_t = a_t x0 + s_t n) to N(MU, S^2): x_t ~ N(a_t MU, v_t),
    v_t = a_t^2 S^2 + s_t^2, so x_t = a_t MU + sqrt(v_t) z and dx/dt = a_t' MU + v_t' / (2 v_t) (x - a_t MU).
    The derivatives are finite differences (one-sided at the ends, where linear_vp's s_t' is infinite)."""
    def a_v(t):
        a, s = obj.alpha_sigma(t)
        return a, a ** 2 * S ** 2 + s ** 2

    def velocity(x, t):
        lo, hi = (t - 1e-6).clamp(0, 1), (t + 1e-6).clamp(0, 1)
        (a_lo, v_lo), (a_hi, v_hi), (a, v) = a_v(lo), a_v(hi), a_v(t)
        da, dv, a, v = (u.view(-1, 1, 1, 1) for u in ((a_hi - a_lo) / (hi - lo), (v_hi - v_lo) / (hi - lo), a, v))
        return da * MU + dv / (2 * v) * (x - a * MU)
    return velocity


@pytest.mark.parametrize("flow_path", list(FLOW_PATHS))
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_the_exact_velocity_of_each_path_carries_noise_to_the_data(flow_path, method):
    obj = make_objective("flow", None, flow_path=flow_path)
    noise = _noise(2)
    a1, s1 = (u.item() for u in obj.alpha_sigma(torch.ones(1, dtype=torch.float64)))
    # where the flow ends: x(0) = MU + S z, z = (x(1) - a_1 MU) / sqrt(v_1) (vp's a_1 is 0.007, not 0)
    expected = MU + S * (noise - a1 * MU) / math.sqrt(a1 ** 2 * S ** 2 + s1 ** 2)
    out = sample_flow(path_gaussian_velocity(obj), noise, method, 64, atol=1e-8, rtol=1e-8)
    assert torch.allclose(out, expected, atol=1e-3)


def test_unknown_ode_method_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match="sampling.sampler.*did you mean 'midpoint'"):
        sample_flow(gaussian_velocity, _noise(), "midpiont")
    assert set(FLOW_PATHS) == {"condot", "cosine", "vp", "linear_vp"}


# ---- DDIM / DDPM

def _perfect(obj, x0, seen=None):
    """A model that knows x0: from x_t and t it recovers the noise, and outputs the objective's target."""
    def model(x, t):
        if seen is not None:
            seen.append(t)
        a, s = (v.view(-1, 1, 1, 1) for v in obj.alpha_sigma(t))
        return obj.target(x0, (x - a * x0) / s, t)
    return model


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_a_perfect_predictor_recovers_x0_in_one_step(prediction_type, beta_schedule, method):
    # One step from k = N - 1 lands on x0's estimate (alpha_prev = 1, no noise added). The model is right only
    # when it is asked at the training grid's t = k / (N - 1) for the k the scheduler steps from.
    acp = ddpm_alphas_cumprod(1000, beta_schedule)
    obj = make_objective(prediction_type, acp)
    x0, seen = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)), []
    out = sample_ddpm(_perfect(obj, x0, seen), torch.randn(3, 4, 8, 8), acp, prediction_type, method, steps=1,
                      generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, x0, atol=5e-3 if beta_schedule == "squaredcos_cap_v2" else 1e-4)
    assert len(seen) == 1 and torch.equal(seen[0], torch.ones(3))


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_many_steps_stay_on_the_training_grid_and_reach_x0(method):
    acp = ddpm_alphas_cumprod(1000, "scaled_linear")
    obj, seen = make_objective("epsilon", acp), []
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = sample_ddpm(_perfect(obj, x0, seen), torch.randn(2, 4, 8, 8), acp, "epsilon", method, steps=10, eta=1.0,
                      generator=torch.Generator().manual_seed(4))
    assert torch.allclose(out, x0, atol=1e-4)
    ks = torch.stack([t[0] for t in seen]) * 999
    assert torch.allclose(ks, ks.round(), atol=1e-3) and ks[0] == 999 and (ks[:-1] > ks[1:]).all()


def _sample(method, eta, seed):
    acp = ddpm_alphas_cumprod(1000, "linear")
    model = lambda x, t: 0.3 * x + t.view(-1, 1, 1, 1)  # any fixed function will do
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return sample_ddpm(model, noise, acp, "epsilon", method, steps=8, eta=eta,
                       generator=torch.Generator().manual_seed(seed))


def test_ddim_with_eta_zero_is_deterministic_and_eta_one_and_ddpm_are_not():
    assert torch.equal(_sample("ddim", 0.0, 1), _sample("ddim", 0.0, 2))
    assert not torch.allclose(_sample("ddim", 1.0, 1), _sample("ddim", 1.0, 2), atol=1e-3)
    assert torch.equal(_sample("ddim", 1.0, 1), _sample("ddim", 1.0, 1))      # the generator decides the noise
    assert not torch.allclose(_sample("ddpm", 0.0, 1), _sample("ddpm", 0.0, 2), atol=1e-3)


def test_a_scheduler_config_is_the_same_schedule_as_its_alphas_cumprod():
    acp = ddpm_alphas_cumprod(1000, "squaredcos_cap_v2")
    model = lambda x, t: 0.3 * x
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    by_acp = sample_ddpm(model, noise, acp, steps=5)
    by_config = sample_ddpm(model, noise, {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}, steps=5)
    assert torch.allclose(by_acp, by_config, atol=1e-4)
    with pytest.raises(ValueError, match="sampling.sampler.*did you mean 'ddim'"):
        sample_ddpm(model, noise, acp, method="ddimm")
