"""engine/training/schedules.py: the LR of every schedule, step by step, equals torch's or diffusers' own scheduler."""
from __future__ import annotations

import math

import pytest
import torch
import diffusers.optimization
from diffusers.optimization import get_scheduler

from engine.config.optim_specs import SCHEDULE_PARAMS
from engine.config.schema import NetworkConfig, OptimizerConfig, SCHEDULE_TYPES, ScheduleConfig
from engine.training.schedules import FACTORS, Schedule, component_base_lrs, two_phase_cutoff

BASE_LR = 1e-4
TOTAL = 120
WARMUP = 15
RESUME_AT = 47  # a resume in the middle of every run below


def cfg(kind: str, warmup: int = 0, decay: int = 0, **params) -> ScheduleConfig:
    full = {name: spec[0] for name, spec in SCHEDULE_PARAMS[kind].items()}
    return ScheduleConfig(type=kind, warmup_steps=warmup, lr_decay_steps=decay, params={**full, **params})


def ours(c: ScheduleConfig, total=TOTAL, losses=None, resume_at=RESUME_AT, watches="val_loss") -> list[float]:
    """Our LR of optimizer steps 1..total, stepped like the trainer does, with a save/load at resume_at. A plateau
    watching the validation loss sees `losses` as they are (one validation per step), as torch's does."""
    sched, out = Schedule(c, BASE_LR, total, plateau_watches=watches), []
    for s in range(total):
        if s == resume_at:
            saved = sched.state_dict()
            sched = Schedule(c, BASE_LR, total, plateau_watches=watches)
            sched.load_state_dict(saved)
        out.append(sched.lr)
        if losses and watches == "val_loss":
            sched.observe_validation(losses[s])
        sched.advance(losses[s] if losses else None)
    return out


def run_torch(make, steps: int, resume_at: int | None, losses=None) -> list[float]:
    """LRs of a real torch scheduler on a dummy parameter, saved and reloaded into new objects at resume_at."""
    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
        return opt, make(opt)

    opt, sched, out = *fresh(), []
    for s in range(steps):
        if s == resume_at:
            saved = (opt.state_dict(), sched.state_dict())
            opt, sched = fresh()
            opt.load_state_dict(saved[0])
            sched.load_state_dict(saved[1])
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(losses[s]) if losses else sched.step()
    return out


def with_warmup(make, warmup=WARMUP, total=TOTAL) -> list[float]:
    """diffusers' linear warmup for the first `warmup` steps, then the torch scheduler from its own step 0."""
    warm = [BASE_LR * s / warmup for s in range(warmup)]
    rest_resume = RESUME_AT - warmup if RESUME_AT >= warmup else None
    return warm + run_torch(make, total - warmup, rest_resume)


def close(a: list[float], b: list[float]):
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b), start=1):
        assert x == pytest.approx(y, rel=1e-9, abs=1e-12 * BASE_LR), f"optimizer step {step}: {x} != {y}"


DIFFUSERS_FUNCTIONS = {
    "constant_with_warmup": "get_constant_schedule_with_warmup",
    "linear": "get_linear_schedule_with_warmup",
    "cosine": "get_cosine_schedule_with_warmup",
    "cosine_with_restarts": "get_cosine_with_hard_restarts_schedule_with_warmup",
    "polynomial": "get_polynomial_decay_schedule_with_warmup",
}


@pytest.mark.parametrize("kind,params", [
    ("constant_with_warmup", {}),
    ("linear", {}),
    ("cosine", {}),
    ("cosine", {"num_cycles": 1.5}),
    ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {"power": 2.0, "lr_end": 1e-6}),
])
def test_diffusers_schedules_equal_diffusers_with_warmup_and_resume(kind, params):
    if kind == "constant_with_warmup":
        make = lambda opt, num_training_steps, **kw: diffusers.optimization.get_constant_schedule_with_warmup(opt, **kw)
    else:
        make = getattr(diffusers.optimization, DIFFUSERS_FUNCTIONS[kind])
    expected = run_torch(lambda opt: make(opt, num_warmup_steps=WARMUP, num_training_steps=TOTAL, **params),
                         TOTAL, RESUME_AT)
    close(ours(cfg(kind, WARMUP, **params)), expected)


def test_constant_equals_diffusers_constant():
    expected = run_torch(lambda opt: get_scheduler("constant", opt), TOTAL, RESUME_AT)
    close(ours(cfg("constant")), expected)
    assert set(ours(cfg("constant"))) == {BASE_LR}


T = torch.optim.lr_scheduler


# make(optimizer, span): torch's scheduler; span = the steps after warmup, which T_max / total_iters default to
@pytest.mark.parametrize("kind,params,make", [
    ("CosineAnnealingLR", {"eta_min_factor": 0.1}, lambda o, n: T.CosineAnnealingLR(o, T_max=n, eta_min=0.1 * BASE_LR)),
    ("CosineAnnealingLR", {"eta_min_factor": 0.001, "T_max": 40},
     lambda o, n: T.CosineAnnealingLR(o, T_max=40, eta_min=0.001 * BASE_LR)),
    ("LinearLR", {"start_factor": 1.0, "end_factor": 0.1},
     lambda o, n: T.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=n)),
    ("LinearLR", {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 50},
     lambda o, n: T.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=50)),
    ("ExponentialLR", {"gamma": 0.95}, lambda o, n: T.ExponentialLR(o, gamma=0.95)),
    ("ConstantLR", {"factor": 0.1, "total_iters": 30}, lambda o, n: T.ConstantLR(o, factor=0.1, total_iters=30)),
    ("ConstantLR", {"factor": 0.5}, lambda o, n: T.ConstantLR(o, factor=0.5, total_iters=n)),
    ("StepLR", {"step_size": 25, "gamma": 0.5}, lambda o, n: T.StepLR(o, step_size=25, gamma=0.5)),
    ("StepLR", {"step_size": 0, "gamma": 0.5}, lambda o, n: T.StepLR(o, step_size=math.ceil(n / 3), gamma=0.5)),
])
@pytest.mark.parametrize("warmup", [0, WARMUP])
def test_torch_schedules_equal_torch_with_warmup_and_resume(kind, params, make, warmup):
    span = TOTAL - warmup
    expected = with_warmup(lambda o: make(o, span), warmup) if warmup else \
        run_torch(lambda o: make(o, span), TOTAL, RESUME_AT)
    close(ours(cfg(kind, warmup, **params)), expected)


def plateau_losses(n: int) -> list[float]:
    """Falling, then flat with noise below the threshold, then falling again: the LR must drop on the flat part."""
    return [1.0 / (1 + s) if s < 30 else 0.03 + 1e-7 * math.sin(s) if s < 90 else 0.03 - 0.001 * (s - 89)
            for s in range(n)]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("warmup", [0, WARMUP])
def test_reduce_on_plateau_equals_torch(mode, warmup):
    params = {"mode": mode, "factor": 0.5, "patience": 7, "threshold": 1e-4}
    losses = plateau_losses(TOTAL)
    if mode == "max":
        losses = [1.0 - x for x in losses]  # higher is better
    make = lambda o: T.ReduceLROnPlateau(o, mode=mode, factor=0.5, patience=7, threshold=1e-4)
    warm = [BASE_LR * s / warmup for s in range(warmup)]
    resume = RESUME_AT - warmup
    expected = warm + run_torch(make, TOTAL - warmup, resume, losses[warmup:])
    got = ours(cfg("ReduceLROnPlateau", warmup, **params), losses=losses)
    close(got, expected)
    assert min(got[warmup:]) < BASE_LR  # it did reduce on the flat part


def test_a_plateau_on_the_training_loss_watches_its_moving_average():
    """Without a validation split the per-step loss is too noisy for a plateau test: it sees an EMA (beta 0.98)."""
    from engine.training.schedules import TRAIN_LOSS_EMA_BETA

    losses = plateau_losses(TOTAL)
    smoothed, ema = [], None
    for x in losses:
        ema = x if ema is None else TRAIN_LOSS_EMA_BETA * ema + (1 - TRAIN_LOSS_EMA_BETA) * x
        smoothed.append(ema)
    make = lambda o: T.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=7, threshold=1e-4)  # noqa: E731
    expected = run_torch(make, TOTAL, RESUME_AT, smoothed)
    got = ours(cfg("ReduceLROnPlateau", 0, mode="min", factor=0.5, patience=7, threshold=1e-4), losses=losses,
               watches="train_loss_ema")
    close(got, expected)


def test_an_automatic_step_lr_ends_at_one_percent_not_near_zero():
    curve = Schedule(cfg("StepLR", 0, gamma=0.1), BASE_LR, total_steps=TOTAL).curve(TOTAL)
    assert curve[-1] == pytest.approx(BASE_LR * 0.01) and curve[0] == BASE_LR


def test_every_schedule_type_is_in_the_registry_and_the_schema():
    assert set(FACTORS) == set(SCHEDULE_TYPES) == set(SCHEDULE_PARAMS)


def test_lr_decay_steps_ends_the_decay_and_holds_the_last_lr():
    """everydream2: `--lr_scheduler cosine --lr_decay_steps 1500 --lr_warmup_steps 20` decays within 1500 steps."""
    got = Schedule(cfg("cosine", warmup=20, decay=60), BASE_LR, total_steps=TOTAL).curve(TOTAL)
    expected = run_torch(lambda o: get_scheduler("cosine", o, num_warmup_steps=20, num_training_steps=60), 61, None)
    close(got[:61], expected)
    assert got[60:] == [0.0] * (TOTAL - 60)


def test_warmup_reaches_the_full_lr_at_its_end():
    got = Schedule(cfg("cosine", warmup=100), BASE_LR, total_steps=1000).curve(1000)
    assert got[0] == 0.0 and got[50] == pytest.approx(BASE_LR / 2) and got[100] == BASE_LR
    assert max(got) == BASE_LR and got[-1] < BASE_LR * 1e-4


def test_preserve_lr_keeps_the_saved_lr_under_a_new_schedule():
    old = Schedule(cfg("cosine", warmup=10), BASE_LR, total_steps=100)
    for _ in range(60):
        old.advance()
    saved_lr = old.lr
    plain = Schedule(cfg("cosine"), 3e-4, total_steps=200)
    plain.load_state_dict(old.state_dict())
    assert plain.step == 60 and plain.lr == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 60 / 200)))
    kept = Schedule(cfg("cosine"), 3e-4, total_steps=200)
    kept.load_state_dict(old.state_dict(), preserve_lr=True)
    assert kept.lr == pytest.approx(saved_lr)
    kept.advance()
    assert kept.lr < saved_lr  # and the new cosine carries on from there


def test_bad_schedule_values_name_the_key():
    with pytest.raises(ValueError, match=r"schedules.unet.type: 'cosin' is not one of .*did you mean 'cosine'"):
        Schedule(ScheduleConfig(type="cosin", params={}), BASE_LR, 100, "schedules.unet")
    with pytest.raises(ValueError, match=r"schedules.unet.lr_end: .* must be smaller than the learning rate"):
        Schedule(cfg("polynomial", lr_end=1e-3), BASE_LR, 100, "schedules.unet")


def test_text_encoder_lr_defaults_to_ratio_of_unet_lr():
    optimizers = {"unet": OptimizerConfig(lr=1e-4), "text_encoder": OptimizerConfig(lr=None)}
    assert component_base_lrs(optimizers, ["unet", "text_encoder"], 0.4) == pytest.approx(
        {"unet": 1e-4, "text_encoder": 4e-5})
    optimizers["text_encoder"] = OptimizerConfig(lr=1e-5)
    assert component_base_lrs(optimizers, ["unet", "text_encoder"], 0.4)["text_encoder"] == 1e-5


def test_two_phase_cutoff():
    on = NetworkConfig(train_text_encoder=True, te_two_phase=True, te_phase_fraction=0.5)
    assert two_phase_cutoff(on, 2500) == 1250
    assert two_phase_cutoff(NetworkConfig(train_text_encoder=True), 2500) is None
