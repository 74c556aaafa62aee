"""The objectives' math against closed forms (t in [0, 1] is the noise level everywhere)."""
import pytest
import torch

from engine.training.objectives import (Epsilon, Flow, VPrediction, make_objective, offset_noise,
                               scaled_linear_alphas_cumprod)

ACP = scaled_linear_alphas_cumprod(0.00085, 0.012, 1000)


def _batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 4, 8, 8, generator=g)


def test_scaled_linear_schedule_matches_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    assert torch.allclose(ACP.float(), ref, atol=1e-6)


def test_epsilon_noising_is_the_ddpm_closed_form_on_the_1000_step_grid():
    x0, noise = _batch()
    obj = Epsilon(ACP)
    t = obj.sample_t(6, torch.Generator().manual_seed(1))
    k = torch.round(t * 999).long()
    assert torch.allclose(t * 999, k.float(), atol=1e-3)  # t lies on the model's grid
    a = ACP[k].sqrt().float().view(-1, 1, 1, 1)
    s = (1 - ACP[k]).sqrt().float().view(-1, 1, 1, 1)
    assert torch.allclose(obj.add_noise(x0, noise, t), a * x0 + s * noise, atol=1e-6)
    assert torch.equal(obj.target(x0, noise, t), noise)


def test_v_prediction_target_recovers_x0_and_noise():
    x0, noise = _batch(2)
    obj = VPrediction(ACP)
    t = torch.tensor([0.0, 0.1, 0.5, 0.7, 0.9, 1.0])
    x_t, v = obj.add_noise(x0, noise, t), obj.target(x0, noise, t)
    a, s = (u.view(-1, 1, 1, 1) for u in obj.alpha_sigma(t))
    assert torch.allclose(a * x_t - s * v, x0, atol=1e-5)      # x0 = a x_t - s v
    assert torch.allclose(s * x_t + a * v, noise, atol=1e-5)   # noise = s x_t + a v


def test_v_prediction_matches_diffusers_get_velocity():
    from diffusers import DDPMScheduler

    x0, noise = _batch(3)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    t = torch.tensor([0, 100, 250, 500, 750, 999]) / 999
    k = torch.round(t * 999).long()
    assert torch.allclose(VPrediction(ACP).target(x0, noise, t), sched.get_velocity(x0, noise, k), atol=1e-5)
    assert torch.allclose(VPrediction(ACP).add_noise(x0, noise, t), sched.add_noise(x0, noise, k), atol=1e-5)


def test_flow_path_ends_and_velocity():
    x0, noise = _batch(4)
    obj = Flow()
    ones, zeros = torch.ones(6), torch.zeros(6)
    assert torch.allclose(obj.add_noise(x0, noise, zeros), x0)
    assert torch.allclose(obj.add_noise(x0, noise, ones), noise)
    # the target is d x_t / d t of the straight path
    t, h = torch.full((6,), 0.3), 1e-3
    numeric = (obj.add_noise(x0, noise, t + h) - obj.add_noise(x0, noise, t - h)) / (2 * h)
    assert torch.allclose(numeric, obj.target(x0, noise, t), atol=1e-3)
    assert obj.sample_t(1000, torch.Generator().manual_seed(0)).min() > 0


def test_min_snr_weights_follow_the_paper():
    obj_eps, obj_v = Epsilon(ACP), VPrediction(ACP)
    t = torch.tensor([0.02, 0.5, 0.98])
    snr = obj_eps.snr(t)
    gamma = 5.0
    assert torch.allclose(obj_eps.min_snr_weight(t, gamma), torch.clamp(snr, max=gamma) / snr)
    assert torch.allclose(obj_v.min_snr_weight(t, gamma), torch.clamp(snr, max=gamma) / (snr + 1))
    assert obj_eps.min_snr_weight(t, gamma)[0] < 1 and obj_eps.min_snr_weight(t, gamma)[-1] == 1


def test_sampling_is_reproducible_and_logit_normal_favours_the_middle():
    uniform = Epsilon(ACP, "uniform").sample_t(4000, torch.Generator().manual_seed(5))
    again = Epsilon(ACP, "uniform").sample_t(4000, torch.Generator().manual_seed(5))
    assert torch.equal(uniform, again)
    middle = Flow("logit_normal").sample_t(4000, torch.Generator().manual_seed(5))
    in_middle = lambda t: ((t > 0.25) & (t < 0.75)).float().mean()  # noqa: E731
    assert in_middle(middle) > in_middle(uniform) + 0.1


def test_noise_offset_adds_a_per_channel_constant():
    noise = torch.zeros(2, 4, 8, 8)
    shifted = offset_noise(noise, 0.1, torch.Generator().manual_seed(0))
    assert shifted.std(dim=(2, 3)).max() == 0 and shifted.abs().max() > 0
    assert offset_noise(noise, 0.0, torch.Generator()) is noise


def test_unknown_objective_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'v_prediction'"):
        make_objective("v_predicton", ACP)
