"""engine/training/optimizers.py: every optimizer trains with the parameters the preset names; per-component LRs; resume."""
from __future__ import annotations

import io
import sys

import pytest
import torch

from engine.config.load import ConfigError, preset_from_dict
from engine.config.optim_specs import OPTIMIZER_PARAMS
from engine.config.schema import OPTIMIZER_TYPES, OptimizerConfig, ScheduleConfig
from engine.training.optimizers import OPTIMIZERS, build_optimizers


def params_of(seed: int = 0, shapes=((64, 80), (80,))) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]  # 5120 elements: 8-bit state kicks in


def preset(**sections):
    return preset_from_dict(sections)


def train(optim_set, groups: dict, steps: int, losses=None) -> list[dict]:
    """Fake training: a fixed quadratic loss per component; returns lrs() after each step."""
    out = []
    for s in range(steps):
        for comp, ps in groups.items():
            if optim_set.trainable(comp):
                sum((p ** 2).sum() for p in ps).backward()
        optim_set.step(losses[s] if losses else None)
        optim_set.zero_grad()
        out.append(optim_set.lrs())
    return out


def test_registry_matches_the_schema_and_the_parameter_table():
    assert set(OPTIMIZERS) == set(OPTIMIZER_TYPES) == set(OPTIMIZER_PARAMS)


@pytest.mark.parametrize("kind", OPTIMIZER_TYPES)
def test_every_optimizer_trains_on_cpu(kind):
    p = preset(optimizers={"unet": {"type": kind, "lr": 1.0 if kind == "prodigy" else 1e-2}},
               schedules={"unet": {"type": "constant"}})
    ps = params_of()
    before = [x.detach().clone() for x in ps]
    optim_set = build_optimizers(p.optimizers, p.schedules, {"unet": ps}, total_steps=5, te_lr_ratio=0.4)
    train(optim_set, {"unet": ps}, 5)
    loss_before = sum((x ** 2).sum() for x in before)
    loss_after = sum((x ** 2).sum() for x in ps)
    assert loss_after < loss_before, f"{kind} did not reduce a simple quadratic loss"


def test_adamw_gets_every_named_parameter_and_a_multi_tensor_kernel():
    p = preset(optimizers={"unet": {"type": "adamw", "lr": 3e-4, "betas": [0.8, 0.95], "eps": 1e-6,
                                    "weight_decay": 0.05, "amsgrad": True}})
    opt = build_optimizers(p.optimizers, p.schedules, {"unet": params_of()}, 10, 0.4).optimizers["unet"]
    group = opt.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"], group["amsgrad"]) == ((0.8, 0.95), 1e-6, 0.05, True)
    assert group["foreach"] is True  # on CPU; CUDA tensors get torch's fused kernel (checked on a GPU machine)


def test_sgd_momentum_and_nesterov_reach_torch():
    p = preset(optimizers={"unet": {"type": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
                                    "weight_decay": 1e-4}})
    group = build_optimizers(p.optimizers, p.schedules, {"unet": params_of()}, 10, 0.4).optimizers["unet"] \
        .param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 1e-4)


def test_adafactor_uses_our_lr_by_default_and_its_own_with_relative_step():
    p = preset(optimizers={"unet": {"type": "adafactor", "lr": 1e-3}}, schedules={"unet": {"type": "constant"}})
    ps = params_of()
    optim_set = build_optimizers(p.optimizers, p.schedules, {"unet": ps}, 10, 0.4)
    assert optim_set.optimizers["unet"].param_groups[0]["relative_step"] is False
    assert train(optim_set, {"unet": ps}, 2)[-1]["unet"] == 1e-3
    p = preset(optimizers={"unet": {"type": "adafactor", "relative_step": True, "warmup_init": True}})
    ps = params_of()
    optim_set = build_optimizers(p.optimizers, p.schedules, {"unet": ps}, 10, 0.4)
    lrs = [d["unet"] for d in train(optim_set, {"unet": ps}, 3)]
    assert lrs[0] == pytest.approx(1e-6 * 1) and lrs[2] == pytest.approx(1e-6 * 3)  # Adafactor's warmup_init: 1e-6 x step


def lion_after_one_step(decoupled: bool, lr: float, wd: float, lr_scale: float = 1.0) -> float:
    """A parameter of 1.0 with zero gradient: Lion's sign update is 0, so only weight decay moves it."""
    p = preset(optimizers={"unet": {"type": "lion", "lr": lr, "weight_decay": wd, "decoupled_weight_decay": decoupled}},
               schedules={"unet": {"type": "constant"}})
    x = torch.nn.Parameter(torch.ones(8))
    optim_set = build_optimizers(p.optimizers, p.schedules, {"unet": [x]}, 10, 0.4)
    optim_set.schedules["unet"].base_lr = lr * lr_scale  # as if a schedule had lowered the LR
    x.grad = torch.zeros_like(x)
    optim_set.step()
    return float(x.detach()[0])


def test_lion_weight_decay_coupled_and_decoupled():
    assert lion_after_one_step(False, lr=1e-2, wd=0.5) == pytest.approx(1 - 1e-2 * 0.5)
    # decoupled (lion-pytorch's meaning): the decay does not scale with the LR's size, only with the schedule
    assert lion_after_one_step(True, lr=1e-2, wd=0.01) == pytest.approx(1 - 0.01)
    assert lion_after_one_step(True, lr=1e-2, wd=0.01, lr_scale=0.5) == pytest.approx(1 - 0.005)


def test_unknown_parameter_is_an_error_naming_the_key():
    with pytest.raises(ConfigError) as e:
        build_optimizers({"unet": OptimizerConfig(type="adamw", params={"beta": [0.9, 0.99]})},
                         {"unet": ScheduleConfig(params={})}, {"unet": params_of()}, 10, 0.4)
    (key, message), = e.value.problems
    assert key == "optimizers.unet.beta" and "did you mean 'betas'" in message


def test_missing_optional_package_is_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import fails as if not installed
    p = preset(optimizers={"unet": {"type": "prodigy", "lr": 1.0}})
    with pytest.raises(ConfigError, match=r"prodigy needs the Python package 'prodigyopt'.*pip install prodigyopt"):
        build_optimizers(p.optimizers, p.schedules, {"unet": params_of()}, 10, 0.4)


def test_torch_range_errors_come_back_as_config_errors():
    p = preset(optimizers={"unet": {"type": "adamw", "betas": [1.5, 0.9]}})
    with pytest.raises(ConfigError, match=r"optimizers.unet: adamw rejected its parameters: .*beta"):
        build_optimizers(p.optimizers, p.schedules, {"unet": params_of()}, 10, 0.4)


def two_groups(**network):
    p = preset(network={"train_text_encoder": True, **network},
               optimizers={"unet": {"lr": 1e-4}, "text_encoder": {"lr": None}},
               schedules={"unet": {"type": "cosine", "warmup_steps": 3},
                          "text_encoder": {"type": "cosine", "warmup_steps": 3}})
    groups = {"unet": params_of(0), "text_encoder": params_of(1, shapes=((32, 16),))}
    return p, groups


def test_text_encoder_group_runs_at_0_4_of_the_unet_lr_every_step():
    p, groups = two_groups()
    optim_set = build_optimizers(p.optimizers, p.schedules, groups, 20, p.network.te_lr_ratio)
    lrs = train(optim_set, groups, 20)
    for step in lrs[1:]:
        assert set(step) == {"unet", "text_encoder"}
        assert step["text_encoder"] == pytest.approx(0.4 * step["unet"])
    assert max(s["unet"] for s in lrs) == pytest.approx(1e-4)
    assert max(s["text_encoder"] for s in lrs) == pytest.approx(4e-5)


def test_frozen_component_does_not_appear():
    p, groups = two_groups()
    optim_set = build_optimizers(p.optimizers, p.schedules, {"unet": groups["unet"], "text_encoder": []}, 20, 0.4)
    assert set(optim_set.lrs()) == {"unet"} and not optim_set.trainable("text_encoder")


def test_two_phase_stops_the_text_encoder_at_the_cutoff():
    p, groups = two_groups(te_two_phase=True)
    optim_set = build_optimizers(p.optimizers, p.schedules, groups, 20, 0.4, te_train_steps=10)
    lrs = train(optim_set, groups, 10)
    assert not optim_set.trainable("text_encoder") and optim_set.trainable("unet")
    frozen = [x.detach().clone() for x in groups["text_encoder"]]
    lrs += train(optim_set, {"unet": groups["unet"]}, 10)
    assert all(torch.equal(a, b) for a, b in zip(frozen, groups["text_encoder"]))
    assert [s["text_encoder"] for s in lrs[10:]] == [0.0] * 10
    assert lrs[8]["text_encoder"] > 0  # its cosine spans its own 10 steps, not the run's 20
    assert lrs[9]["text_encoder"] == pytest.approx(4e-5 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 6 / 7))))


def test_resume_continues_exactly(tmp_path):
    """10 straight steps == 4 steps, save, new objects, load, 6 steps: same weights and same LRs."""
    p, _ = two_groups()
    def fresh():
        _, groups = two_groups()
        return groups, build_optimizers(p.optimizers, p.schedules, groups, 10, 0.4)

    groups_a, set_a = fresh()
    lrs_a = train(set_a, groups_a, 10)
    groups_b, set_b = fresh()
    lrs_b = train(set_b, groups_b, 4)
    buf = io.BytesIO()
    torch.save({"optim": set_b.state_dict(), "groups": {c: [x.detach() for x in g] for c, g in groups_b.items()}}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    groups_c, set_c = fresh()
    with torch.no_grad():
        for c, g in groups_c.items():
            for x, y in zip(g, saved["groups"][c]):
                x.copy_(y)
    set_c.load_state_dict(saved["optim"])
    assert set_c.lrs() == lrs_b[-1]
    lrs_b += train(set_c, groups_c, 6)
    assert lrs_b == lrs_a
    for c in groups_a:
        assert all(torch.equal(a, b) for a, b in zip(groups_a[c], groups_c[c]))


def test_preserve_lr_keeps_the_lr_when_the_schedule_changes():
    p, groups = two_groups()
    old = build_optimizers(p.optimizers, p.schedules, groups, 10, 0.4)
    train(old, groups, 6)
    saved, saved_lr = old.state_dict(), old.lrs()
    q = preset(network={"train_text_encoder": True}, optimizers={"unet": {"lr": 1e-3}},
               schedules={"unet": {"type": "constant"}, "text_encoder": {"type": "constant"}})
    new = build_optimizers(q.optimizers, q.schedules, groups, 20, 0.4)
    new.load_state_dict(saved, preserve_lr=True)
    assert train(new, groups, 1)[0] == pytest.approx(
        {c: old.schedules[c].lr for c in saved_lr})  # the LR the old run was about to use
    plain = build_optimizers(q.optimizers, q.schedules, groups, 20, 0.4)
    plain.load_state_dict(saved)
    assert train(plain, groups, 1)[0] == pytest.approx({"unet": 1e-3, "text_encoder": 4e-4})


def test_reduce_on_plateau_reads_the_loss_passed_to_step():
    p = preset(schedules={"unet": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 2}})
    ps = params_of()
    optim_set = build_optimizers(p.optimizers, p.schedules, {"unet": ps}, 20, 0.4)
    lrs = [d["unet"] for d in train(optim_set, {"unet": ps}, 8, losses=[1.0] * 8)]
    assert lrs[:4] == [1e-4] * 4 and lrs[4] == pytest.approx(5e-5)


def test_resume_with_another_optimizer_type_starts_its_state_fresh_and_says_so():
    p, groups = two_groups()
    old = build_optimizers(p.optimizers, p.schedules, groups, 10, 0.4)
    train(old, groups, 3)
    q = preset(network={"train_text_encoder": True}, optimizers={"unet": {"type": "sgd"}, "text_encoder": {"lr": None}})
    new = build_optimizers(q.optimizers, q.schedules, groups, 10, 0.4)
    new.load_state_dict(old.state_dict())
    assert new.global_step == 3 and len(new.warnings) == 1 and "saved run used AdamW" in new.warnings[0]
    train(new, groups, 2)  # and it trains on
