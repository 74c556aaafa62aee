"""optimizers and schedules: one optimizer and one learning-rate schedule per component, and their defaults.
The parameters each type takes are in engine/config/optim_specs.py."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

from engine.config.optim_specs import OPTIMIZER_PARAMS, SCHEDULE_PARAMS
from engine.config.schema.choices import COMPONENTS, OPTIMIZER_TYPES, SCHEDULE_TYPES
from engine.config.schema.field_meta import opt


@dataclass(frozen=True)
class OptimizerConfig:
    """One component's optimizer. Parameters other than type and lr depend on the type (engine/config/optim_specs.py)."""
    type: str = opt("adamw", "Optimizer.", choices=OPTIMIZER_TYPES)
    lr: Optional[float] = opt(1e-4, "Learning rate. Empty for the text encoder: te_lr_ratio x UNet LR.",
                              min=0.0, max=10.0)
    params: dict = opt({}, "Optimizer parameters (betas, eps, weight_decay, momentum, ...).", advanced=True)


@dataclass(frozen=True)
class ScheduleConfig:
    """One component's learning-rate schedule. Parameters depend on the type (engine/config/optim_specs.py)."""
    type: str = opt("constant_with_warmup", "Learning-rate schedule.", choices=SCHEDULE_TYPES)
    warmup_steps: int = opt(0, "Steps over which the LR rises linearly from 0.", unit="steps", min=0,
                            max=10_000_000)
    lr_decay_steps: int = opt(0, "Steps over which the schedule decays (0 = the whole run).", unit="steps", min=0,
                              max=10_000_000, advanced=True)
    params: dict = opt({}, "Schedule parameters (eta_min_factor, gamma, step_size, ...).", advanced=True)


def _defaults(table: dict, kind: str) -> dict:
    return {name: copy.deepcopy(spec[0]) for name, spec in table[kind].items()}


def default_optimizers() -> dict:
    """unet and text_encoder as always; vae and discriminator (training.mode vae) as the FluxFlow guide's
    high-quality VAE example: AdamW 2e-5, betas [0.9, 0.95] for the VAE, [0.0, 0.9] with AMSGrad for the critic."""
    params = _defaults(OPTIMIZER_PARAMS, OptimizerConfig.type)
    return {"unet": OptimizerConfig(params=params), "text_encoder": OptimizerConfig(lr=None, params=dict(params)),
            "vae": OptimizerConfig(lr=2e-5, params={**params, "betas": [0.9, 0.95]}),
            "discriminator": OptimizerConfig(lr=2e-5, params={**params, "betas": [0.0, 0.9], "weight_decay": 0.001,
                                                              "amsgrad": True})}


def default_schedules() -> dict:
    params = _defaults(SCHEDULE_PARAMS, ScheduleConfig.type)
    return {comp: ScheduleConfig(params=dict(params)) for comp in COMPONENTS}
