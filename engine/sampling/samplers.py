"""Samplers by name: the preset's `sampling.sampler` value -> a diffusers scheduler, swapped into a pipeline.

Built with from_config, so the model's own betas / shift / prediction type carry over. Families list which ones
they allow. A UNet trained as a rectified flow samples with flow Euler (engine/models/unet_flow.py); the DiT's ODE
solvers are in engine/sampling/ode.py.
"""
from __future__ import annotations

# sampler name -> diffusers scheduler class name
SAMPLERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}
# what A1111's PNG Info calls each sampler (written into the samples' `parameters` text)
A1111_SAMPLER_NAMES = {"euler": "Euler", "euler_a": "Euler a", "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M",
                       "flow_euler": "Euler"}


def set_sampler(pipeline, name: str) -> None:
    """Swap the pipeline's scheduler for SAMPLERS[name], keeping the model's noise schedule config."""
    import diffusers

    from engine.registry import choose

    cls = getattr(diffusers, choose(SAMPLERS, name, "sample.sampler"))
    pipeline.scheduler = cls.from_config(pipeline.scheduler.config)
