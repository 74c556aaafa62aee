"""Checks that involve more than one field of a preset (single fields are checked while loading, in convert.py)."""
from __future__ import annotations

from engine.config.schema import Preset


def validate(p: Preset) -> list[tuple[str, str]]:
    """Problems that involve more than one field (single fields are checked while loading)."""
    out = []
    d, t, n = p.dataset, p.training, p.network
    multiple = 16 if p.model.family == "flux" else 8
    if d.resolution_px % multiple:
        out.append(("dataset.resolution_px", f"{d.resolution_px} must be a multiple of {multiple} for "
                                             f"{p.model.family}"))
    if d.bucketing and not d.min_bucket_px <= d.resolution_px <= d.max_bucket_px:
        out.append(("dataset.resolution_px", f"{d.resolution_px} must lie between dataset.min_bucket_px "
                                             f"({d.min_bucket_px}) and dataset.max_bucket_px ({d.max_bucket_px})"))
    if d.use_reg and not d.reg_path:
        out.append(("dataset.reg_path", "dataset.use_reg is on but no regularization folder is set"))
    if t.max_steps == 0 and t.max_epochs == 0:
        out.append(("training.max_steps", "set training.max_steps or training.max_epochs (both are 0)"))
    objective = t.objective if t.objective != "auto" else p.model.prediction_type
    if p.model.family == "flux" and objective not in ("auto", "flow"):
        out.append(("training.objective", f"{objective!r} cannot train family 'flux' (use 'flow' or 'auto')"))
    if p.model.family in ("sd15", "sdxl") and objective == "flow":
        out.append(("training.objective", f"'flow' (rectified flow) needs a v-prediction base model: family sd2, "
                                          f"not {p.model.family!r}"))
    if n.te_two_phase and not n.train_text_encoder:
        out.append(("network.te_two_phase", "needs network.train_text_encoder: true"))
    if n.type == "lora" and p.model.family == "flux" and "kohya" in p.output.formats:
        out.append(("output.formats", "FLUX LoRAs are saved in the 'diffusers' format (ComfyUI and diffusers load "
                                      "it); remove 'kohya'"))
    if not p.output.formats and n.type == "lora":
        out.append(("output.formats", "choose at least one of kohya, diffusers"))
    if p.optimizers["unet"].lr is None:
        out.append(("optimizers.unet.lr", "the UNet/transformer needs a learning rate"))
    for comp, opt in p.optimizers.items():
        if opt.type == "sgd" and opt.params.get("nesterov") and not opt.params.get("momentum"):
            out.append((f"optimizers.{comp}.nesterov", "Nesterov momentum needs momentum > 0"))
    for comp, sched in p.schedules.items():
        if sched.type == "ReduceLROnPlateau" and sched.params.get("mode", "min") not in ("min", "max"):
            out.append((f"schedules.{comp}.mode", f"{sched.params['mode']!r} is not one of min, max"))
    return out
