"""Will it fit? The predicted peak VRAM and system RAM of a training run, before a single weight is loaded.

    sizes = model_sizes(preset.model)                  # parameter counts and dtypes from the safetensors headers
    settings = fit_settings(preset)                    # only the knobs that move memory
    fit = estimate(sizes, settings)                    # Estimate: the parts, peak VRAM, peak RAM, the margin
    options = advice(sizes, settings, free_vram_gb)    # ways to fit, cheapest first: fp8, block swap, 8-bit, px
    print("\\n".join(describe_fit(fit, options, gpu_name, free_vram_gb, ram_total_gb, ram_free_gb)))

One module per concern: headers.py (a part's counts from its file headers), sizes.py (a model's parts from the
files model.* names, or the real model's sizes), settings.py (the preset values that move memory), peak.py (the
estimate; its docstring has the model of a training step), savers.py (the ways to fit), words.py (the dry run's
lines), figures.py (bytes per dtype and per trained parameter), family.py (FamilyMemory, what a family tells it).
What is one family's (its activations, its real models' sizes, how its files name the blocks) is in the family's
folder: engine/models/families/<folder>/memory.py, found by engine.models.families.memory_model(name) (None: no
estimate for that family). Torch-free: the dry run and the GUI get an answer in well under a second. GB means 2**30
bytes here, as Windows Task Manager and the system doctor count. The margin is ±15 % until a GPU run calibrates it:
bench/flux_memory.py --gpu measures the real peaks against these.
"""
from __future__ import annotations

from engine.models.fit.family import NO_BLOCKS, BlockLayout, FamilyMemory
from engine.models.fit.figures import (EIGHT_BIT, GB, MARGIN, OPTIMIZER_STATE_BYTES, PRECISION_BYTES,
                                       RESOLUTIONS_PX)
from engine.models.fit.headers import Component, Tensors, component_from_tensors, read_header
from engine.models.fit.peak import (Estimate, Part, block_bytes, estimate, lora_params, pinned_bytes, quantized_bytes,
                                   swapped_blocks)
from engine.models.fit.savers import SAVERS, Saver, advice
from engine.models.fit.settings import Settings, fit_settings, local_path
from engine.models.fit.sizes import ModelSizes, model_sizes
from engine.models.fit.words import describe_fit

__all__ = ["EIGHT_BIT", "GB", "MARGIN", "NO_BLOCKS", "OPTIMIZER_STATE_BYTES", "PRECISION_BYTES", "RESOLUTIONS_PX",
           "SAVERS", "BlockLayout", "Component", "Estimate", "FamilyMemory", "ModelSizes", "Part", "Saver", "Settings",
           "Tensors", "advice", "block_bytes", "component_from_tensors", "describe_fit", "estimate", "fit_settings",
           "local_path", "lora_params", "model_sizes", "pinned_bytes", "quantized_bytes", "read_header",
           "swapped_blocks"]
