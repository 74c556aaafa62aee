"""The allowed values of the schema's choice fields (a field's `choices`), as tuples in the order the GUI lists them.

Torch-free data; config/validate.py, config/imports/ and the GUI read them too.
"""
from __future__ import annotations

from engine.models.families import FOLDERS

FAMILIES = tuple(FOLDERS)   # model.family: the registry's names (a new family is its folder and one line there)
QUANTIZE_BASE = ("none", "fp8", "int8", "nf4")
TIMESTEP_SAMPLING = ("uniform", "logit_normal", "sigmoid", "shift", "flux_shift")
OBJECTIVES = ("auto", "epsilon", "v_prediction", "sample", "flow")
FLOW_PATHS = ("condot", "cosine", "vp", "linear_vp")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PRECISIONS = ("bf16", "fp16", "fp32")
TRAINING_PRECISIONS = ("auto", *PRECISIONS)
EXPORT_FORMATS = ("kohya", "diffusers")
# The optimizer and schedule names; their parameters are in engine/config/optim_specs.py.
OPTIMIZER_TYPES = ("adamw", "adamw8bit", "lion", "lion8bit", "sgd", "prodigy", "adafactor")
SCHEDULE_TYPES = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
    "CosineAnnealingLR", "LinearLR", "ExponentialLR", "ConstantLR", "StepLR", "ReduceLROnPlateau",
)
COMPONENTS = ("unet", "text_encoder", "vae", "discriminator")
# other trainers' names for the denoiser's component (FluxFlow: flow; diffusers/SimpleTuner: transformer)
COMPONENT_ALIASES = {"transformer": "unet", "flow": "unet"}
TRAINING_MODES = ("denoiser", "vae", "rl")
RL_METHODS = ("grpo", "nft")
NFT_ADV_MODES = ("normal", "positive_only", "negative_only", "one_only", "binary")
# rl.rewards names (engine/rl/rewards/); a preset weighs any of them
REWARD_NAMES = ("jpeg_compressibility", "jpeg_incompressibility", "brightness", "clip_score", "aesthetic", "python",
                "server")
VAE_PARTS = ("whole", "decoder")
RECONSTRUCTION_LOSSES = ("l1", "mse")
