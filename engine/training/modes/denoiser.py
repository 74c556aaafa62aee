"""The denoiser's phase (training.mode denoiser: a LoRA or a full fine-tune of the family's UNet / transformer):
the weighted MSE between the prediction and the objective's target, the network's files in every output format,
the held-out loss with fixed draws (engine/training/validation.py), and the samples (modes/denoiser_samples.py).
Reflow and RL's warmup train the same way: their phases reuse these functions.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.training import checkpoints as ckpt
from engine.training.modes.denoiser_samples import render_samples
from engine.training.modes.phase import Phase, from_the_start, train_dataset
from engine.training.validation import validation_loss


def backward(r, load_batch, micro_batches: int) -> tuple[torch.Tensor, list]:
    """One micro-batch: its loss under autocast (the batch too: text encoders that train encode inside it), then
    its backward pass, scaled for gradient accumulation."""
    with r.accelerator.autocast():
        batch = load_batch()
        loss = batch_loss(r, batch)
    r.accelerator.backward(loss / micro_batches)
    return loss, batch["files"]


def batch_loss(r, batch: dict) -> torch.Tensor:
    """Weighted MSE between the prediction and the objective's target, per sample then averaged."""
    from engine.training.objectives import offset_noise

    training = r.preset.training
    x0 = batch["latents"].to(r.device, torch.float32)  # the noising math in fp32; only the model runs in half
    if "noise" in batch:  # a batch that brings its noise: reflow's pairs (modes/reflow.py)
        noise = batch["noise"].to(r.device, torch.float32)
    else:
        noise = torch.randn(x0.shape, generator=r.noise_gen, device=r.device)
        noise = offset_noise(noise, training.noise_offset, r.noise_gen)
    t = r.objective.sample_t(len(x0), r.noise_gen, r.device, image_tokens=r.family.caps.image_tokens(x0.shape))
    x_t = r.objective.add_noise(x0, noise, t).to(r.weight_dtype)
    pred = r.family.predict(r.comps, x_t, t, batch["cond"], batch["size_cond"])
    target = r.objective.target(x0, noise, t)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, x0.dim())))
    weight = batch["loss_weight"].float()
    if training.min_snr_gamma > 0:
        weight = weight * r.objective.min_snr_weight(t, training.min_snr_gamma).float()
    return (per_sample * weight).mean()


def save_network(r, folder: Path, stem: str) -> None:
    """The trained network (its EMA when on) in every output format, each file self-checked."""
    r.status("saving", f"Saving {stem}")
    pipeline = r.family.pipeline(r.comps)
    if r.comps.extra.get("rectified_flow"):
        from engine.models.unet_flow import write_sampling_note

        write_sampling_note(folder, stem)
    # the self-check loads the file where each module is: idle ones stay in CPU RAM (FLUX's T5 would not fit)
    with (r.ema.applied() if r.ema else contextlib.nullcontext()):
        if r.preset.network.type == "full":
            r.emit("saved", path=str(ckpt.export_full(folder, stem, pipeline)), format="diffusers-folder",
                   step=r.step)
            return
        text_encoders = {name: te for name, te in zip(r.family.text_encoder_names, r.comps.text_encoders)}
        for path, fmt in ckpt.export_lora(folder, stem, r.preset.output.formats, r.comps.denoiser, text_encoders,
                                          pipeline, export_info(r), r.preset.output.save_precision):
            r.emit("saved", path=str(path), format=fmt, step=r.step)


def export_info(r):
    from engine.data.samples import tag_frequency
    from engine.models.families.base import by_prediction
    from engine.models.lora_export import LoraExportInfo

    d = r.preset.dataset
    prediction = {"v_prediction": "v"}.get(r.objective.name, r.objective.name) if r.family.writes_prediction_type else ""
    return LoraExportInfo(
        title=r.preset.output.run_name,  # a rectified flow on SD2-v: prediction flow, the v model's base version
        base_model_version=by_prediction(r.family.kohya_base_model, r.comps.extra.get("variant", ""),
                                         r.objective.name, r.comps.prediction_type),   # FLUX.2: by its size
        architecture=by_prediction(r.family.modelspec_architecture, r.comps.extra.get("variant", ""),
                                   r.objective.name, r.comps.prediction_type), prediction_type=prediction,
        implementation=r.family.modelspec_implementation, training_started_at=r.started_at,
        resolution_px=(d.resolution_px, d.resolution_px), text_encoder_names=r.family.text_encoder_names,
        # sd-scripts counts the epoch being trained from 1: a run stopped inside its first epoch says 1
        steps=r.step, epoch=r.epoch + (1 if r.cursor else 0), tag_frequency=tag_frequency(r.samples, d.path),
        base_model_name=Path(r.preset.model.path).name, trigger_phrase=d.trigger,
        naming=r.family.kohya_naming,
        extra={**r.family.metadata, "ss_seed": str(r.preset.training.seed),
               "ss_learning_rate": str(r.preset.optimizers["unet"].lr),
               "ss_v_parameterization": str(r.objective.name == "v_prediction")})


DENOISER = Phase(name="denoiser", begun=from_the_start, train=train_dataset, backward=backward, save=save_network,
                 validation_loss=validation_loss, render_samples=render_samples)
