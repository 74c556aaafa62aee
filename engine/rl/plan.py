"""What an RL run will do, from the preset alone (torch-free: `python -m engine train --dry-run` prints it)."""
from __future__ import annotations

import math

from engine.models.families import capabilities


def rl_steps_per_epoch(preset) -> int:
    """Optimizer steps of one RL epoch: its images, trained num_inner_epochs times, batch x grad_accum a step."""
    rl, t = preset.rl, preset.training
    images = rl.num_batches_per_epoch * t.batch_size * rl.num_images_per_prompt
    return rl.num_inner_epochs * math.ceil(images / (t.batch_size * t.grad_accum))


def describe_rl(preset) -> str:
    rl, t = preset.rl, preset.training
    warmup = min(rl.warmup_steps, t.max_steps)
    per_epoch = rl_steps_per_epoch(preset)
    epochs = math.ceil((t.max_steps - warmup) / per_epoch)
    images = rl.num_batches_per_epoch * t.batch_size * rl.num_images_per_prompt
    trained = max(1, int(rl.num_inference_steps * rl.timestep_fraction))
    guided = capabilities(preset.model.family).guidance == "cfg" and rl.guidance_scale > 1
    if rl.method == "grpo":  # the current model (x2 with guidance), the reference with the KL
        forwards = (2 if guided else 1) * (2 if rl.kl_beta > 0 else 1)
        per_step = f"{forwards} forward pass(es) per trained step (guidance {'on' if guided else 'off'}, KL " \
                   f"{'on' if rl.kl_beta > 0 else 'off'}), from the rollout's recorded steps"
    else:  # current, old, and the reference with the KL; no guidance in training (DiffusionNFT)
        forwards = 3 if rl.kl_beta > 0 else 2
        per_step = f"{forwards} forward passes per trained step (current, old{', reference' if rl.kl_beta > 0 else ''})"
    rewards = ", ".join(f"{name} x{weight:g}" for name, weight in rl.rewards.items())
    return "\n".join([
        f"RL ({rl.method.upper()}): {warmup} supervised warmup step(s), then {t.max_steps - warmup} RL steps in "
        f"{epochs} epoch(s) of {per_epoch} step(s)",
        f"  each epoch: {images} rollout images ({rl.num_batches_per_epoch} batch(es) x {t.batch_size} prompt(s) x "
        f"{rl.num_images_per_prompt}), {rl.num_inference_steps} sampler steps each, {trained} of them trained per "
        f"image ({per_step})",
        f"  rewards: {rewards}; prompts: {rl.prompts_file or 'the dataset captions'}"])
