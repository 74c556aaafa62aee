"""Learning-rate schedules as plain Python (torch-free), used by both the trainer and the LR preview.

    sched = Schedule(schedule_cfg, base_lr=1e-4, total_steps=2500)
    sched.lr            # the LR the next optimizer step uses
    sched.advance(loss) # after each optimizer step (loss only matters for ReduceLROnPlateau)

Why not torch's schedulers: the GUI draws the exact curve while the user types, and its process must not import
torch. So the formulas live here once; tests/test_schedules.py checks them step by step against torch's and
diffusers' own schedulers with the same parameters (including a resume in the middle).

Conventions (the same as diffusers' `get_scheduler` and torch's LRScheduler):
- `step` counts the optimizer steps already taken; the LR of optimizer step n (1-based) is lr_at(n - 1).
- Warmup: for step < warmup_steps the LR is base_lr * step / warmup_steps (so the very first step has LR 0, as in
  diffusers); then the schedule proper starts, at its own step 0.
- The decay ends at `lr_decay_steps` (everydream2's option; 0 = the whole run) and the LR holds from there on.
  For the torch-style schedules, T_max / total_iters default to the decay span (decay end - warmup).
"""
from __future__ import annotations

import math

from engine.registry import choose

# --- step-based schedules: factor(t, span, p, base_lr) -> multiplier of base_lr --------------------------------------
# t: steps since warmup ended, clamped to span (the steps from warmup end to decay end, >= 1); p: the type params.


def _constant(t, span, p, base_lr):
    return 1.0


def _linear(t, span, p, base_lr):  # diffusers get_linear_schedule_with_warmup
    return max(0.0, (span - t) / span)


def _cosine(t, span, p, base_lr):  # diffusers get_cosine_schedule_with_warmup
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(p["num_cycles"]) * 2.0 * t / span)))


def _cosine_with_restarts(t, span, p, base_lr):  # diffusers get_cosine_with_hard_restarts_schedule_with_warmup
    progress = t / span
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(p["num_cycles"]) * progress) % 1.0))))


def _polynomial(t, span, p, base_lr):  # diffusers get_polynomial_decay_schedule_with_warmup
    lr_end = p["lr_end"]
    if t >= span:
        return lr_end / base_lr
    return ((base_lr - lr_end) * (1 - t / span) ** p["power"] + lr_end) / base_lr


def _cosine_annealing(t, span, p, base_lr):  # torch CosineAnnealingLR, eta_min = eta_min_factor x initial LR
    t_max = p["T_max"] or span
    eta = p["eta_min_factor"]
    return eta + (1.0 - eta) * (1.0 + math.cos(math.pi * t / t_max)) / 2.0


def _linear_lr(t, span, p, base_lr):  # torch LinearLR
    iters = p["total_iters"] or span
    start, end = p["start_factor"], p["end_factor"]
    return start + (end - start) * min(t, iters) / iters


def _exponential(t, span, p, base_lr):  # torch ExponentialLR
    return p["gamma"] ** t


def _constant_lr(t, span, p, base_lr):  # torch ConstantLR: factor until total_iters, then 1
    iters = p["total_iters"] or span
    return p["factor"] if t < iters else 1.0


def _step_lr(t, span, p, base_lr):  # torch StepLR
    # automatic step_size: two drops in the run (gamma 0.1 ends at 1 % of the LR, as torchvision's recipes do); a
    # tenth of the run gave ten drops, 1e-10 x the LR at the end
    step_size = p["step_size"] or max(1, math.ceil(span / 3))
    return p["gamma"] ** (t // step_size)


FACTORS = {
    "constant": _constant,
    "constant_with_warmup": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
    "polynomial": _polynomial,
    "CosineAnnealingLR": _cosine_annealing,
    "LinearLR": _linear_lr,
    "ExponentialLR": _exponential,
    "ConstantLR": _constant_lr,
    "StepLR": _step_lr,
    "ReduceLROnPlateau": _constant,  # the plateau part is stateful: _Plateau below
}


class _Plateau:
    """torch's ReduceLROnPlateau (threshold_mode 'rel', cooldown 0, min_lr 0, eps 1e-8), on an absolute LR."""

    EPS = 1e-8  # torch ignores reductions smaller than this (in LR units)

    def __init__(self, p: dict, lr: float):
        self.mode, self.factor = p["mode"], p["factor"]
        self.patience, self.threshold = p["patience"], p["threshold"]
        self.lr = lr
        self.best = math.inf if self.mode == "min" else -math.inf
        self.bad_steps = 0

    def _better(self, loss: float) -> bool:
        if self.mode == "min":
            return loss < self.best * (1.0 - self.threshold)
        return loss > self.best * (1.0 + self.threshold)

    def observe(self, loss: float) -> None:
        if self._better(loss):
            self.best, self.bad_steps = loss, 0
        else:
            self.bad_steps += 1
        if self.bad_steps > self.patience:
            new_lr = max(self.lr * self.factor, 0.0)
            if self.lr - new_lr > self.EPS:
                self.lr = new_lr
            self.bad_steps = 0

    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": self.best, "bad_steps": self.bad_steps}

    def load_state_dict(self, sd: dict) -> None:
        self.lr, self.best, self.bad_steps = sd["lr"], sd["best"], sd["bad_steps"]


def _check(kind: str, p: dict, base_lr: float) -> str:
    """'key: what is wrong' for parameter values a schedule cannot run with, or ''."""
    if kind == "polynomial" and not p["lr_end"] < base_lr:
        return f"lr_end: {p['lr_end']} must be smaller than the learning rate ({base_lr})"
    if kind == "ReduceLROnPlateau" and p["mode"] not in ("min", "max"):
        return f"mode: {p['mode']!r} is not one of min, max"
    for key in ("T_max", "total_iters", "step_size"):
        if key in p and p[key] < 0:
            return f"{key}: {p[key]} must be 0 (automatic) or a positive number of steps"
    if kind == "LinearLR" and not (0 < p["start_factor"] <= 1 and 0 <= p["end_factor"] <= 1):
        return "start_factor/end_factor: must lie in (0, 1] and [0, 1] (as in torch's LinearLR)"
    return ""


PLATEAU_WATCHES = {"val_loss": "the validation loss, at each validation",
                   "train_loss_ema": "an exponential moving average of the training loss (about 50 steps), "
                                     "at every step"}
TRAIN_LOSS_EMA_BETA = 0.98  # the per-step loss is too noisy for a plateau test: ~50 steps of memory


class Schedule:
    """The LR of one component over a run. `cfg` is a ScheduleConfig (type, warmup_steps, lr_decay_steps, params).
    plateau_watches (ReduceLROnPlateau): "val_loss" (observe_validation) or "train_loss_ema" (advance)."""

    def __init__(self, cfg, base_lr: float, total_steps: int, field: str = "schedule",
                 plateau_watches: str = "train_loss_ema"):
        self.factor_fn = choose(FACTORS, cfg.type, f"{field}.type")
        self.type, self.params = cfg.type, dict(cfg.params)
        self.base_lr = float(base_lr)
        self.warmup_steps = int(cfg.warmup_steps)
        decay_end = int(cfg.lr_decay_steps) or int(total_steps)
        self.span = max(1, decay_end - self.warmup_steps)
        self.step = 0
        self.plateau = _Plateau(self.params, self.base_lr) if cfg.type == "ReduceLROnPlateau" else None
        self.plateau_watches = plateau_watches
        self.loss_ema: float | None = None
        problem = _check(cfg.type, self.params, self.base_lr)
        if problem:
            raise ValueError(f"{field}.{problem}")

    def lr_at(self, step: int) -> float:
        """The LR after `step` optimizer steps (ReduceLROnPlateau: with the reductions seen so far)."""
        if step < self.warmup_steps:
            return self.base_lr * step / max(1, self.warmup_steps)
        if self.plateau is not None:
            return self.plateau.lr
        t = min(step - self.warmup_steps, self.span)
        return self.base_lr * self.factor_fn(t, self.span, self.params, self.base_lr)

    @property
    def lr(self) -> float:
        return self.lr_at(self.step)

    def advance(self, loss: float | None = None) -> None:
        """Count one optimizer step. ReduceLROnPlateau watching the training loss sees its moving average, once
        warmup is over."""
        if self.plateau is not None and self.plateau_watches == "train_loss_ema" and loss is not None:
            b = TRAIN_LOSS_EMA_BETA
            self.loss_ema = float(loss) if self.loss_ema is None else b * self.loss_ema + (1 - b) * float(loss)
            if self.step >= self.warmup_steps:
                self.plateau.observe(self.loss_ema)
        self.step += 1

    def observe_validation(self, val_loss: float) -> None:
        """A validation loss, for a ReduceLROnPlateau that watches it (patience counts validations)."""
        if self.plateau is not None and self.plateau_watches == "val_loss" and self.step >= self.warmup_steps:
            self.plateau.observe(float(val_loss))

    def curve(self, steps: int) -> list[float]:
        """The LR of optimizer steps 1..steps, without changing this schedule (no losses: plateaus never drop)."""
        return [self.lr_at(s) for s in range(steps)]

    def state_dict(self) -> dict:
        return {"type": self.type, "step": self.step, "base_lr": self.base_lr, "lr": self.lr,
                "plateau": self.plateau.state_dict() if self.plateau else None, "loss_ema": self.loss_ema}

    def load_state_dict(self, sd: dict, preserve_lr: bool = False) -> None:
        """Continue at the saved step. preserve_lr: rescale this schedule so its LR now equals the saved LR
        (fluxflow's --preserve_lr, for resuming with a new schedule or LR without a jump)."""
        saved_lr = sd.get("lr")
        self.step = int(sd["step"])
        if self.plateau is not None and sd.get("plateau") and sd.get("type") == self.type:
            self.plateau.load_state_dict(sd["plateau"])
            self.loss_ema = sd.get("loss_ema")
        if preserve_lr and saved_lr is not None:
            self._rescale_to(saved_lr)

    def _rescale_to(self, lr: float) -> None:
        now = self.lr
        if self.plateau is not None and self.step >= self.warmup_steps:
            self.plateau.lr = lr
        elif now > 0:
            self.base_lr *= lr / now
        else:  # the new schedule is at 0 here (e.g. the first warmup step): take the saved LR as the peak
            self.base_lr = lr


# --- per-component LR policy (the FLUX identity guide): also torch-free, shared with the preview ----------------------
def component_base_lrs(optimizers_cfg: dict, components, te_lr_ratio: float) -> dict[str, float]:
    """The initial LR of each component. A component other than the UNet/transformer with lr empty gets
    te_lr_ratio x the UNet LR (the guide's 'TE LR = 0.4 x UNet LR')."""
    unet_lr = optimizers_cfg["unet"].lr
    out = {}
    for comp in components:
        lr = optimizers_cfg[comp].lr
        if lr is None:
            if unet_lr is None:
                raise ValueError(f"optimizers.{comp}.lr is empty and so is optimizers.unet.lr; set a learning rate")
            lr = te_lr_ratio * unet_lr
        out[comp] = float(lr)
    return out


def train_steps_of(component: str, total_steps: int, te_train_steps: int | None) -> int:
    """How many steps a component trains: the text encoder stops at the two-phase cut-off when there is one."""
    if component == "unet" or te_train_steps is None:
        return total_steps
    return min(total_steps, te_train_steps)


def two_phase_cutoff(network_cfg, total_steps: int) -> int | None:
    """The step after which the text encoder is frozen (network.te_two_phase), or None for no cut-off."""
    if not (network_cfg.train_text_encoder and network_cfg.te_two_phase):
        return None
    return max(0, round(network_cfg.te_phase_fraction * total_steps))


def picks_own_lr(opt_cfg) -> bool:
    """True when the optimizer ignores the schedule and picks its own LR (Adafactor with relative_step)."""
    return opt_cfg.type == "adafactor" and bool(opt_cfg.params.get("relative_step"))
