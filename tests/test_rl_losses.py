"""The RL guide's formulas on random tensors: GRPO's clipped ratio objective with its KL term, DiffusionNFT's
positive / negative predictions with the adaptive weight and every adv_mode, the old model's update per
decay_type, and the advantages (per prompt, with history, or over the epoch)."""
import math

import pytest
import torch

from engine.rl.advantages import PromptStats, epoch_advantages
from engine.rl.losses import grpo_loss, nft_loss, nft_r, old_model_decay
from engine.rl.weights import WeightState

g = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_grpo_loss_is_the_guides_clipped_objective_plus_kl():
    log_prob, old, adv = rand(64) * 0.3, rand(64) * 0.3, rand(64) * 4
    mean, mean_ref, std = rand(64, 4, 8, 8), rand(64, 4, 8, 8), rand(64, 1, 1, 1).abs() + 0.1
    terms = grpo_loss(log_prob, old, adv, clip_range=0.2, adv_clip_max=5.0, kl_beta=0.1, mean=mean,
                      mean_ref=mean_ref, std=std)
    # by hand, element by element, as the guide writes it
    expected_policy, clipped_count = 0.0, 0
    for i in range(64):
        a = max(-5.0, min(5.0, float(adv[i])))
        ratio = math.exp(float(log_prob[i] - old[i]))
        expected_policy += max(-a * ratio, -a * min(max(ratio, 0.8), 1.2)) / 64
        clipped_count += abs(ratio - 1) > 0.2
    kl = sum(float(((mean[i] - mean_ref[i]) ** 2).mean()) / (2 * float(std[i]) ** 2) for i in range(64)) / 64
    assert float(terms["policy_loss"]) == pytest.approx(expected_policy, rel=1e-9)
    assert float(terms["kl"]) == pytest.approx(kl, rel=1e-9)
    assert float(terms["loss"]) == pytest.approx(expected_policy + 0.1 * kl, rel=1e-9)
    assert float(terms["clip_frac"]) == pytest.approx(clipped_count / 64)
    assert float(terms["approx_kl"]) == pytest.approx(float(0.5 * ((log_prob - old) ** 2).mean()))


def test_grpo_gradient_pushes_up_the_log_prob_of_a_positive_advantage_only_inside_the_clip():
    log_prob = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([0.0, -0.5, 0.5], dtype=torch.float64)  # ratios 1, e^0.5 (clipped), e^-0.5
    grpo_loss(log_prob, old, torch.ones(3, dtype=torch.float64), 0.2, 5.0)["loss"].backward()
    assert log_prob.grad[0] < 0 and log_prob.grad[1] == 0 and log_prob.grad[2] < 0  # descent raises 0 and 2


@pytest.mark.parametrize("mode, expected", [
    ("normal", [0.0, 0.3, 0.5, 0.7, 1.0]),
    ("positive_only", [0.5, 0.5, 0.5, 0.7, 1.0]),
    ("negative_only", [0.0, 0.3, 0.5, 0.5, 0.5]),
    ("one_only", [0.0, 0.0, 0.0, 1.0, 1.0]),
    ("binary", [0.0, 0.0, 0.5, 1.0, 1.0]),
])
def test_nft_r_per_adv_mode(mode, expected):
    advantages = torch.tensor([-9.0, -2.0, 0.0, 2.0, 7.0])  # clipped to +-5 first
    assert nft_r(advantages, mode, 5.0).tolist() == pytest.approx(expected)


def test_an_unknown_adv_mode_names_the_key():
    with pytest.raises(ValueError, match="rl.adv_mode"):
        nft_r(torch.zeros(2), "mixed", 5.0)


@pytest.mark.parametrize("mode", ["normal", "positive_only", "negative_only", "one_only", "binary"])
def test_nft_loss_is_the_guides_formula(mode):
    """positive = b v + (1 - b) old, negative = (1 + b) old - b v; x0 = x_t - t v (a flow); the adaptive weight
    is mean |x0_pred - x0| per image; loss = mean(r L+ / b + (1 - r) L- / b) + kl_beta mean((v - v_ref)^2)."""
    b, beta, kl_beta = 6, 0.4, 0.01
    pred, old, ref = rand(b, 4, 8, 8), rand(b, 4, 8, 8), rand(b, 4, 8, 8)
    x0, x_t, t = rand(b, 4, 8, 8), rand(b, 4, 8, 8), torch.rand(b, generator=g, dtype=torch.float64)
    r = nft_r(rand(b) * 3, mode, 5.0)
    to_x0 = lambda x, v: x - t.reshape(-1, 1, 1, 1) * v  # noqa: E731
    terms = nft_loss(pred, old, x_t, x0, to_x0, r, beta, kl_beta, ref)
    expected = 0.0
    for i in range(b):
        ti = float(t[i])
        pos = beta * pred[i] + (1 - beta) * old[i]
        neg = (1 + beta) * old[i] - beta * pred[i]
        losses = []
        for p in (pos, neg):
            x0p = x_t[i] - ti * p
            weight = max(float((x0p - x0[i]).abs().mean()), 1e-5)
            losses.append(float(((x0p - x0[i]) ** 2).mean()) / weight)
        expected += (float(r[i]) * losses[0] / beta + (1 - float(r[i])) * losses[1] / beta) / b
    kl = float(((pred - ref) ** 2).mean())
    assert float(terms["policy_loss"]) == pytest.approx(expected, rel=1e-9)
    assert float(terms["kl"]) == pytest.approx(kl, rel=1e-9)
    assert float(terms["loss"]) == pytest.approx(expected + kl_beta * kl, rel=1e-9)


def test_nft_moves_the_model_towards_the_good_image_and_away_from_the_bad_one():
    """One gradient step on the current prediction: with r = 1 the implied x0 comes closer to the image, with
    r = 0 it goes further away (the implicit negative policy takes the blame)."""
    x0, x_t, t = rand(1, 4, 8, 8), rand(1, 4, 8, 8), torch.full((1,), 0.5, dtype=torch.float64)
    old = rand(1, 4, 8, 8)
    to_x0 = lambda x, v: x - t.reshape(-1, 1, 1, 1) * v  # noqa: E731
    for r, closer in ((1.0, True), (0.0, False)):
        pred = old.clone().requires_grad_(True)
        nft_loss(pred, old, x_t, x0, to_x0, torch.tensor([r], dtype=torch.float64), 0.5)["loss"].backward()
        stepped = pred.detach() - 0.05 * pred.grad
        before, after = (to_x0(x_t, old) - x0).norm(), (to_x0(x_t, stepped) - x0).norm()
        assert (after < before) == closer


@pytest.mark.parametrize("decay_type, steps, expected", [
    (0, [0, 10, 10_000], [1.0, 1.0, 1.0]),              # fixed: the old model never moves
    (1, [0, 100, 400, 600, 10_000], [0.0, 0.1, 0.4, 0.5, 0.5]),
    (2, [0, 74, 75, 175, 10_000], [0.0, 0.0, 0.0, 0.75, 0.999]),
])
def test_old_model_decay_per_decay_type(decay_type, steps, expected):
    assert [old_model_decay(s, decay_type) for s in steps] == pytest.approx(expected)


def test_the_old_model_follows_the_weights_by_its_decay_and_swaps_in_and_out():
    weights = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2))]
    old = WeightState(weights)
    with torch.no_grad():
        weights[0].add_(1.0)  # training moved the weights: 2, 0
    old.follow(weights, 0.75)
    assert old.values[0].tolist() == pytest.approx([1.25] * 3)  # 0.75 * 1 + 0.25 * 2
    old.follow(weights, 1.0)  # decay_type 0
    assert old.values[0].tolist() == pytest.approx([1.25] * 3)
    with old.swapped_in(weights):
        assert weights[0].tolist() == pytest.approx([1.25] * 3)
    assert weights[0].tolist() == [2.0] * 3


def test_epoch_advantages_are_standardised_and_zero_when_all_rewards_agree():
    a = epoch_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert float(a.mean()) == pytest.approx(0, abs=1e-6) and float(a.std(unbiased=False)) == pytest.approx(1, 1e-4)
    assert epoch_advantages(torch.full((4,), 0.3)).abs().max() < 1e-6


def test_per_prompt_statistics_use_each_prompts_history_once_it_has_enough():
    stats = PromptStats(buffer_size=4, min_count=3)
    prompts = ["cat", "cat", "dog", "dog"]
    first = stats.advantages(prompts, torch.tensor([10.0, 12.0, 0.0, 2.0]))
    # too few rewards per prompt yet: the epoch's mean (6) and std decide, so the cats are all above it
    assert first[0] > 0 and first[1] > 0 and first[2] < 0 and first[3] < 0
    second = stats.advantages(prompts, torch.tensor([11.0, 11.0, 1.0, 1.0]))
    # 4 rewards each now: each prompt against its own history (cat 10, 12, 11, 11 -> mean 11): no advantage
    assert second.abs().max() < 1e-4
    assert stats.prompt_means() == pytest.approx({"cat": 11.0, "dog": 1.0})
    again = PromptStats(buffer_size=4, min_count=3)
    again.load_state_dict(stats.state_dict())
    assert again.history["cat"].maxlen == 4 and list(again.history["dog"]) == [0.0, 2.0, 1.0, 1.0]
