"""The parameters each optimizer and LR schedule accepts: name -> (default, type, help). Torch-free.

The preset writes them flat next to `type` and `lr` (as in the fluxflow guide):
    optimizers: {unet: {type: adamw, lr: 1e-4, betas: [0.9, 0.99], weight_decay: 0.01}}
engine/config/ rejects any name not listed here for the chosen type, so nothing is silently dropped;
engine/training/optimizers.py builds the objects from the same table.
"""
from __future__ import annotations

PAIR = "pair"  # a [float, float] list, e.g. betas

_LION_DECOUPLED = ("Off: each step shrinks weights by LR x weight_decay. On (lion-pytorch's meaning): by weight_decay "
                   "x the schedule's fraction of the initial LR, independent of the LR's size (use a much smaller "
                   "weight_decay).")

OPTIMIZER_PARAMS = {
    "adamw": {
        "betas": ([0.9, 0.999], PAIR, "Adam's moving-average factors for the gradient and its square."),
        "eps": (1e-8, float, "Added to the denominator for numerical stability."),
        "weight_decay": (0.01, float, "Decoupled weight decay."),
        "amsgrad": (False, bool, "Use the AMSGrad variant."),
    },
    "adamw8bit": {
        "betas": ([0.9, 0.999], PAIR, "Adam's moving-average factors."),
        "eps": (1e-8, float, "Added to the denominator for numerical stability."),
        "weight_decay": (0.01, float, "Decoupled weight decay."),
        "amsgrad": (False, bool, "Use the AMSGrad variant."),
    },
    "lion": {
        "betas": ([0.9, 0.99], PAIR, "Lion's interpolation and momentum factors."),
        "weight_decay": (0.0, float, "Weight decay (Lion wants 3-10x AdamW's)."),
        "decoupled_weight_decay": (False, bool, _LION_DECOUPLED),
    },
    "lion8bit": {
        "betas": ([0.9, 0.99], PAIR, "Lion's interpolation and momentum factors."),
        "weight_decay": (0.0, float, "Weight decay (Lion wants 3-10x AdamW's)."),
        "decoupled_weight_decay": (False, bool, _LION_DECOUPLED),
    },
    "sgd": {
        "momentum": (0.0, float, "Momentum factor."),
        "nesterov": (False, bool, "Nesterov momentum (needs momentum > 0)."),
        "weight_decay": (0.0, float, "L2 weight decay."),
        "dampening": (0.0, float, "Dampening for momentum."),
    },
    "prodigy": {
        "betas": ([0.9, 0.999], PAIR, "Adam-style factors."),
        "weight_decay": (0.0, float, "Weight decay."),
        "decouple": (True, bool, "Decoupled weight decay."),
        "d_coef": (1.0, float, "Multiplier of the estimated step size."),
        "use_bias_correction": (False, bool, "Adam-style bias correction."),
        "safeguard_warmup": (False, bool, "Avoid overestimating the step size during warmup."),
    },
    "adafactor": {
        "relative_step": (False, bool, "Let Adafactor choose the LR itself (off for LoRA: use lr)."),
        "scale_parameter": (False, bool, "Scale the LR by the parameter's RMS."),
        "warmup_init": (False, bool, "Time-dependent LR warmup (needs relative_step)."),
        "weight_decay": (0.0, float, "Weight decay."),
        "clip_threshold": (1.0, float, "Threshold of the update's RMS."),
        "decay_rate": (-0.8, float, "Coefficient of the running average of the squared gradient."),
    },
}

# Schedules: `warmup_steps` and `lr_decay_steps` are common fields of every schedule (engine/config/schema/optimizers.py).
SCHEDULE_PARAMS = {
    "constant": {},
    "constant_with_warmup": {},
    "linear": {},
    "cosine": {"num_cycles": (0.5, float, "Cosine half-waves over the run (0.5 = decay once to 0).")},
    "cosine_with_restarts": {"num_cycles": (1, int, "Number of hard restarts.")},
    "polynomial": {"power": (1.0, float, "Power of the polynomial decay."),
                   "lr_end": (1e-7, float, "Final learning rate.")},
    "CosineAnnealingLR": {"eta_min_factor": (0.1, float, "Lowest LR as a fraction of the initial LR."),
                          "T_max": (0, int, "Steps of one half cosine (0 = the whole run).")},
    "LinearLR": {"start_factor": (1.0, float, "LR multiplier at the start."),
                 "end_factor": (0.1, float, "LR multiplier at the end."),
                 "total_iters": (0, int, "Steps of the linear change (0 = the whole run).")},
    "ExponentialLR": {"gamma": (0.95, float, "LR is multiplied by gamma every step.")},
    "ConstantLR": {"factor": (1.0, float, "LR multiplier until total_iters."),
                   "total_iters": (0, int, "Steps with the factor applied (0 = the whole run).")},
    "StepLR": {"step_size": (0, int, "Multiply the LR by gamma every step_size steps (0 = a third of the run: "
                                     "two drops)."),
               "gamma": (0.1, float, "Decay factor.")},
    "ReduceLROnPlateau": {"mode": ("min", str, "min: lower loss is better; max: higher is better."),
                          "factor": (0.1, float, "New LR = LR x factor on a plateau."),
                          "patience": (10, int, "Checks without improvement before the LR drops: validations "
                                                "when the run has a validation split (it watches the validation "
                                                "loss), else steps (it watches the training loss's moving "
                                                "average)."),
                          "threshold": (1e-4, float, "Smallest change that counts as improvement.")},
}
