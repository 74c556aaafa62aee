"""A UNet trained as a rectified flow (training.objective: flow on a v-prediction SD2, EveryDream2's
--rectified_flow): it samples, and its saved folder ships, diffusers' FlowMatchEulerDiscreteScheduler on the straight
path (shift 1), so what the user sees is what was trained; loading such a folder back gives prediction type flow.
"""
from __future__ import annotations


def is_flow_scheduler(scheduler) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch")


def as_unet_flow_scheduler(scheduler):
    """A FlowMatch scheduler made usable by diffusers' SD / SDXL pipelines, which call two things only the
    noise-level schedulers have (init_noise_sigma, scale_model_input; both identities on the straight path). They
    are set on the instance, so a saved scheduler_config.json stays the plain diffusers class."""
    scheduler.init_noise_sigma = 1.0
    scheduler.scale_model_input = lambda sample, timestep=None: sample
    return scheduler


def use_flow_sampler(pipeline) -> bool:
    """Rectified flow trained on a UNet (training.objective: flow on a v-prediction SD2): its samples, and the
    scheduler its saved folder ships, are flow Euler on the straight path (shift 1), so what the user sees is what
    was trained. False when the pipeline samples a flow already (FLUX)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if is_flow_scheduler(pipeline.scheduler):
        return False
    pipeline.scheduler = as_unet_flow_scheduler(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0))
    return True


NOTE_SUFFIX = ".how-to-sample.txt"
SAMPLING_NOTE = """{name} was trained as a rectified flow (Easel, training.objective: flow) on a v-prediction
SD2 base: it predicts the straight path's velocity (noise - image) at timestep sigma x 1000. Sampled as an epsilon
or v-prediction model it gives noise. Sample it as a flow:

ComfyUI   Load Checkpoint (or the base model + Load LoRA) -> ModelSamplingSD3 with shift 1.0 -> KSampler with
          sampler euler and scheduler simple (or normal); 20-30 steps, CFG as usual.
A1111 / Forge  have no flow sampling for SD2 models: use ComfyUI or diffusers.
diffusers (a full model's folder ships FlowMatchEulerDiscreteScheduler; SD pipelines need two lines more):
          pipe = StableDiffusionPipeline.from_pretrained(folder)
          pipe.scheduler.init_noise_sigma = 1.0
          pipe.scheduler.scale_model_input = lambda sample, timestep=None: sample
Easel     python -m engine sample is for models trained from scratch; its samples/ folder shows this model's.
"""


def write_sampling_note(folder, stem: str):
    """<stem>.how-to-sample.txt beside the saved files of a rectified-flow UNet."""
    from pathlib import Path

    from engine.atomic import atomic_write_text

    return atomic_write_text(Path(folder) / f"{stem}{NOTE_SUFFIX}", SAMPLING_NOTE.format(name=stem))
