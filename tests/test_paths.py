"""The flow-matching package's probability paths as Easel objectives, the DDPM-from-scratch schedule helper and the
x0 ("sample") objective, against the package itself and closed forms (t in [0, 1] is the noise level)."""
import math

import pytest
import torch

from engine.training.objectives import (Epsilon, Flow, PathFlow, Sample, ddpm_alphas_cumprod, make_objective,
                                        scaled_linear_alphas_cumprod)
from engine.training.paths import FLOW_PATHS, from_library

PATHS = list(FLOW_PATHS)
T = torch.tensor([0.01, 0.2, 0.35, 0.5, 0.8, 0.99])


def _batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 4, 8, 8, generator=g)


def _column(v):
    return v.view(-1, 1, 1, 1)


@pytest.mark.parametrize("flow_path", PATHS)
def test_each_path_is_the_packages_own_after_the_one_conversion(flow_path):
    import flow_matching.path.scheduler as schedulers
    from flow_matching.path import AffineProbPath

    x0, noise = _batch(1)
    ref = AffineProbPath(getattr(schedulers, FLOW_PATHS[flow_path])()).sample(x_0=noise, x_1=x0, t=1 - T)
    obj = make_objective("flow", None, flow_path=flow_path)
    assert torch.allclose(obj.add_noise(x0, noise, T), ref.x_t, atol=1e-6)
    assert torch.allclose(obj.target(x0, noise, T), -ref.dx_t, atol=1e-5)
    a, s = (_column(v) for v in obj.alpha_sigma(T))   # what snr and the samplers' tests build on
    assert torch.allclose(obj.add_noise(x0, noise, T), a * x0 + s * noise, atol=1e-6)


@pytest.mark.parametrize("flow_path", PATHS)
def test_target_is_the_velocity_in_easels_time_and_the_ends_are_data_and_noise(flow_path):
    # independent of the conversion: the target must be d x_t / d t with t the noise level
    x0, noise = _batch(2)
    obj = PathFlow(flow_path)
    t, h = torch.full((6,), 0.4, dtype=torch.float64), 1e-4
    x0, noise = x0.double(), noise.double()
    numeric = (obj.add_noise(x0, noise, t + h) - obj.add_noise(x0, noise, t - h)) / (2 * h)
    assert torch.allclose(numeric, obj.target(x0, noise, t), atol=1e-5)
    assert torch.allclose(obj.add_noise(x0, noise, torch.zeros(6)), x0, atol=1e-6)   # t = 0: the data
    a1, s1 = obj.alpha_sigma(torch.ones(1))
    assert s1.item() == pytest.approx(1, abs=1e-4) and a1.item() < 0.01            # t = 1: (almost) pure noise


def test_cosine_and_linear_vp_match_their_closed_forms():
    x0, noise = _batch(3)
    c, s = _column(torch.cos(math.pi / 2 * T)), _column(torch.sin(math.pi / 2 * T))
    cosine = PathFlow("cosine")
    assert torch.allclose(cosine.add_noise(x0, noise, T), c * x0 + s * noise, atol=1e-6)
    assert torch.allclose(cosine.target(x0, noise, T), math.pi / 2 * (c * noise - s * x0), atol=1e-5)
    assert torch.allclose(cosine.snr(T), (torch.cos(math.pi / 2 * T) / torch.sin(math.pi / 2 * T)) ** 2, rtol=1e-4)
    # linear_vp: alpha = 1 - t, sigma = sqrt(1 - (1 - t)^2)
    lvp, u = PathFlow("linear_vp"), _column(1 - T)
    assert torch.allclose(lvp.add_noise(x0, noise, T), u * x0 + (1 - u ** 2).sqrt() * noise, atol=1e-6)


def test_condot_reproduces_the_flow_objective():
    x0, noise = _batch(4)
    old, new = Flow(), PathFlow("condot")
    assert torch.allclose(new.add_noise(x0, noise, T), old.add_noise(x0, noise, T), atol=1e-6)
    assert torch.allclose(new.target(x0, noise, T), old.target(x0, noise, T), atol=1e-6)
    assert torch.allclose(new.snr(T), old.snr(T), rtol=1e-4)
    assert torch.allclose(new.min_snr_weight(T, 5.0), old.min_snr_weight(T, 5.0), rtol=1e-4)
    # the same noise levels, for every timestep_sampling option Flow has
    for sampling in ("uniform", "logit_normal", "shift", "flux_shift"):
        a = Flow(sampling).sample_t(64, torch.Generator().manual_seed(9), image_tokens=1024)
        b = PathFlow("cosine", sampling).sample_t(64, torch.Generator().manual_seed(9), image_tokens=1024)
        assert torch.equal(a, b)


def test_make_objective_keeps_its_positional_form_and_picks_the_path():
    flux = make_objective("flow", None, "shift", 1.0, 2.0)
    assert type(flux) is Flow and flux.shift == 2.0 and flux.sampling == "shift"
    assert type(make_objective("flow", None, flow_path="condot")) is Flow
    vp = make_objective("flow", None, "logit_normal", 1.5, 3.0, "vp")
    assert isinstance(vp, PathFlow) and vp.name == "flow" and vp.flow_path == "vp" and vp.scale == 1.5
    with pytest.raises(ValueError, match="training.flow_path.*did you mean 'cosine'"):
        make_objective("flow", None, flow_path="cosin")


def test_sample_objective_predicts_x0_with_the_x0_min_snr_weight():
    acp = ddpm_alphas_cumprod(1000, "linear")
    x0, noise = _batch(5)
    obj = make_objective("sample", acp)
    assert isinstance(obj, Sample) and obj.name == "sample"
    t = obj.sample_t(6, torch.Generator().manual_seed(0))
    assert torch.equal(obj.add_noise(x0, noise, t), Epsilon(acp).add_noise(x0, noise, t))
    assert torch.equal(obj.target(x0, noise, t), x0)
    # x0 loss = epsilon loss / snr, so the weight that equals Min-SNR's epsilon weight min(snr, g) / snr is min(snr, g)
    snr = obj.snr(t)
    assert torch.allclose(obj.min_snr_weight(t, 5.0), torch.clamp(snr, max=5.0))


def test_ddpm_schedules_are_diffusers_and_their_closed_forms():
    from diffusers import DDPMScheduler

    n = 1000
    linear = torch.cumprod(1 - torch.linspace(1e-4, 0.02, n, dtype=torch.float64), 0)
    assert torch.allclose(ddpm_alphas_cumprod(n, "linear"), linear, rtol=1e-5)
    assert torch.allclose(ddpm_alphas_cumprod(n, "scaled_linear"), scaled_linear_alphas_cumprod(1e-4, 0.02, n),
                          rtol=1e-5)
    cosine = ddpm_alphas_cumprod(n, "squaredcos_cap_v2")
    ref = DDPMScheduler(num_train_timesteps=n, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    assert cosine.dtype == torch.float64 and torch.equal(cosine.float(), ref)
    # Nichol & Dhariwal's alpha_bar(t) = cos^2((t + s) / (1 + s) pi / 2), s = 0.008, away from the capped end
    f = lambda k: math.cos((k / n + 0.008) / 1.008 * math.pi / 2) ** 2
    assert cosine[499].item() == pytest.approx(f(500) / f(0), rel=1e-4)
    assert len(ddpm_alphas_cumprod(50, "linear")) == 50
    with pytest.raises(ValueError, match="training.beta_schedule.*did you mean 'linear'"):
        ddpm_alphas_cumprod(1000, "lineer")


def test_from_library_is_the_single_conversion():
    # the package's polynomial path, alpha_s = s^2, sigma_s = 1 - s^2: with u = 1 - t,
    # x_t = u^2 x0 + (1 - u^2) noise and dx_t/dt = 2 u (noise - x0)
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler

    x0, noise = _batch(6)
    x_t, target = from_library(AffineProbPath(PolynomialConvexScheduler(2)), x0, noise, T)
    u = _column(1 - T)
    assert torch.allclose(x_t, u ** 2 * x0 + (1 - u ** 2) * noise, atol=1e-6)
    assert torch.allclose(target, 2 * u * (noise - x0), atol=1e-5)
