"""The preset schema: every field of a preset, with its type, default, unit, range and one line of help.

Torch-free. This package is data only: the sections ARE the documentation of the YAML format, and the GUI
builds its form from the same metadata (`help`, `unit`, `min`, `max`, `choices`, `advanced`), in field order.
Here: Preset, the whole file, in the order of its sections. One module per concern holds the sections:

    choices.py     the allowed values of choice fields (FAMILIES, OBJECTIVES, COMPONENTS, REWARD_NAMES, ...)
    field_meta.py  opt(): a field's default and metadata
    model.py       model (and its dit)           dataset.py  dataset, validation
    training.py    network, training (its ema)   optimizers.py  optimizers and schedules per component
    outputs.py     sampling, output              vae.py, rl.py  the sections of training.mode vae and rl

Every name is importable from here (`from engine.config.schema import TrainingConfig, COMPONENTS`).
Loading is config/load.py, checks across fields config/validate.py, saving config/save.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.config.schema.choices import (BETA_SCHEDULES, COMPONENT_ALIASES, COMPONENTS, EXPORT_FORMATS, FAMILIES,
                                          FLOW_PATHS, NFT_ADV_MODES, OBJECTIVES, OPTIMIZER_TYPES, PRECISIONS,
                                          QUANTIZE_BASE, RECONSTRUCTION_LOSSES, REWARD_NAMES, RL_METHODS,
                                          SCHEDULE_TYPES, TIMESTEP_SAMPLING, TRAINING_MODES, TRAINING_PRECISIONS,
                                          VAE_PARTS)
from engine.config.schema.dataset import DatasetConfig, ValidationConfig
from engine.config.schema.field_meta import opt
from engine.config.schema.model import DitConfig, ModelConfig
from engine.config.schema.optimizers import OptimizerConfig, ScheduleConfig, default_optimizers, default_schedules
from engine.config.schema.outputs import OutputConfig, SamplingConfig
from engine.config.schema.rl import RlConfig
from engine.config.schema.training import EmaConfig, NetworkConfig, TrainingConfig
from engine.config.schema.vae import VaeConfig

__all__ = [
    "CURRENT_VERSION", "Preset", "opt",
    "ModelConfig", "DitConfig", "DatasetConfig", "ValidationConfig", "NetworkConfig", "TrainingConfig", "EmaConfig",
    "OptimizerConfig", "ScheduleConfig", "default_optimizers", "default_schedules", "SamplingConfig", "OutputConfig",
    "VaeConfig", "RlConfig",
    "FAMILIES", "QUANTIZE_BASE", "TIMESTEP_SAMPLING", "OBJECTIVES", "FLOW_PATHS", "BETA_SCHEDULES", "PRECISIONS",
    "TRAINING_PRECISIONS", "EXPORT_FORMATS", "OPTIMIZER_TYPES", "SCHEDULE_TYPES", "COMPONENTS", "COMPONENT_ALIASES",
    "TRAINING_MODES", "RL_METHODS", "NFT_ADV_MODES", "REWARD_NAMES", "VAE_PARTS", "RECONSTRUCTION_LOSSES",
]

CURRENT_VERSION = 1


@dataclass(frozen=True)
class Preset:
    version: int = opt(CURRENT_VERSION, "Preset format version (older presets are migrated on load).", min=0,
                       max=CURRENT_VERSION, advanced=True)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizers: dict = field(default_factory=default_optimizers,
                             metadata={"help": "Optimizer per component: unet (UNet or transformer; also written "
                                               "transformer or flow), text_encoder, vae and discriminator "
                                               "(training.mode vae).",
                                       "item": OptimizerConfig, "keys": COMPONENTS})
    schedules: dict = field(default_factory=default_schedules,
                            metadata={"help": "Learning-rate schedule per component.",
                                      "item": ScheduleConfig, "keys": COMPONENTS})
    vae: VaeConfig = field(default_factory=VaeConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
