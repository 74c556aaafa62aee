"""Optimizers per model component, each with its own LR schedule.

    from engine.training.schedules import two_phase_cutoff
    optim_set = build_optimizers(preset.optimizers, preset.schedules,
                                 {"unet": unet_params, "text_encoder": te_params},   # leave out frozen components
                                 total_steps=2500, te_lr_ratio=preset.network.te_lr_ratio,
                                 te_train_steps=two_phase_cutoff(preset.network, 2500))
    for batch in ...:
        loss.backward()
        optim_set.step(loss.item())          # optimizer.step + schedule for every component still training
        optim_set.zero_grad()
        events.emit("step", lr=optim_set.lrs(), ...)   # {"unet": 1e-4, "text_encoder": 4e-5}: the LR this step used
        if not optim_set.trainable("text_encoder"): ... freeze the text encoder (two-phase training)
    torch.save(optim_set.state_dict(), ...)  /  optim_set.load_state_dict(sd, preserve_lr=False)
    optim_set.warnings                   # after a resume: things to tell the user (e.g. a changed optimizer type)

OPTIMIZERS is the one registry (keys = YAML values); heavy or optional packages (bitsandbytes, prodigyopt,
transformers) are imported only by the factory that needs them. The LR math lives in engine/training/schedules.py
(torch-free, so the GUI's preview draws the same numbers the trainer uses).
"""
from __future__ import annotations

import copy
import logging

import torch

from engine.config.load import ConfigError
from engine.config.optim_specs import OPTIMIZER_PARAMS
from engine.registry import suggest
from engine.training.schedules import Schedule, component_base_lrs, picks_own_lr, train_steps_of

ADAPTIVE_LR = "adaptive"  # what lrs() cannot know for Adafactor with relative_step (it picks its own LR)


def _import_optional(module: str, package: str, what: str):
    try:
        if module == "bitsandbytes":  # its import logs a harmless kernel-hub message on CPU
            logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError([("", f"{what} needs the Python package '{package}', which is not installed. Install it "
                                f"into Easel's environment (pip install {package}) or choose another optimizer.")]) \
            from None


def _fused_ok(params) -> bool:
    """torch's fused AdamW: one kernel launch per step instead of one per tensor. CUDA only here: on CPU its first
    step costs seconds of setup and foreach is as fast for LoRA-sized tensors."""
    return all(p.device.type == "cuda" and p.is_floating_point() for p in params) and bool(params)


# --- factories: (params, lr, p) -> torch.optim.Optimizer; p holds every parameter of optim_specs for the type -------
def _adamw(params, lr, p):
    fused = _fused_ok(params)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(p["betas"]), eps=p["eps"], weight_decay=p["weight_decay"],
                             amsgrad=p["amsgrad"], fused=fused or None, foreach=None if fused else True)


def _adamw8bit(params, lr, p):
    bnb = _import_optional("bitsandbytes", "bitsandbytes", "adamw8bit")
    return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(p["betas"]), eps=p["eps"],
                               weight_decay=p["weight_decay"], amsgrad=p["amsgrad"])


def _lion_wd(lr, p) -> float:
    # bitsandbytes' Lion decays by lr_t x wd each step. decoupled_weight_decay (lion-pytorch's meaning, the guide's
    # source): the decay ignores the LR's size, i.e. lr_t x wd / lr_0, so passing wd / lr_0 gives exactly that.
    wd = p["weight_decay"]
    return wd / lr if p["decoupled_weight_decay"] and lr > 0 else wd


def _lion(params, lr, p):
    bnb = _import_optional("bitsandbytes", "bitsandbytes", "lion")
    return bnb.optim.Lion(params, lr=lr, betas=tuple(p["betas"]), weight_decay=_lion_wd(lr, p))


def _lion8bit(params, lr, p):
    bnb = _import_optional("bitsandbytes", "bitsandbytes", "lion8bit")
    return bnb.optim.Lion8bit(params, lr=lr, betas=tuple(p["betas"]), weight_decay=_lion_wd(lr, p))


def _sgd(params, lr, p):
    return torch.optim.SGD(params, lr=lr, momentum=p["momentum"], dampening=p["dampening"],
                           weight_decay=p["weight_decay"], nesterov=p["nesterov"])


def _prodigy(params, lr, p):
    prodigyopt = _import_optional("prodigyopt", "prodigyopt", "prodigy")
    return prodigyopt.Prodigy(params, lr=lr, betas=tuple(p["betas"]), weight_decay=p["weight_decay"],
                              decouple=p["decouple"], d_coef=p["d_coef"], use_bias_correction=p["use_bias_correction"],
                              safeguard_warmup=p["safeguard_warmup"])


def _adafactor(params, lr, p):
    optimization = _import_optional("transformers.optimization", "transformers", "adafactor")
    return optimization.Adafactor(params, lr=None if p["relative_step"] else lr, relative_step=p["relative_step"],
                                  scale_parameter=p["scale_parameter"], warmup_init=p["warmup_init"],
                                  weight_decay=p["weight_decay"], clip_threshold=p["clip_threshold"],
                                  decay_rate=p["decay_rate"])


OPTIMIZERS = {
    "adamw": _adamw,
    "adamw8bit": _adamw8bit,
    "lion": _lion,
    "lion8bit": _lion8bit,
    "sgd": _sgd,
    "prodigy": _prodigy,
    "adafactor": _adafactor,
}


def resolve_params(kind: str, given: dict, field: str) -> dict:
    """Every parameter of optimizer `kind`: the defaults of optim_specs overlaid with `given`.
    An unknown name is an error (never silently dropped)."""
    if kind not in OPTIMIZERS:
        raise ConfigError([(f"{field}.type", f"{kind!r} is not one of {', '.join(OPTIMIZERS)}"
                                             f"{suggest(kind, OPTIMIZERS)}")])
    specs = OPTIMIZER_PARAMS[kind]
    unknown = [name for name in given if name not in specs]
    if unknown:
        raise ConfigError([(f"{field}.{name}", f"is not a parameter of {kind}{suggest(name, specs)}; allowed: "
                                               f"{', '.join(specs)}") for name in unknown])
    return {**{name: copy.deepcopy(spec[0]) for name, spec in specs.items()}, **given}


def make_optimizer(opt_cfg, params: list, lr: float, field: str) -> torch.optim.Optimizer:
    """One component's optimizer from its OptimizerConfig section, at initial LR `lr`."""
    p = resolve_params(opt_cfg.type, dict(opt_cfg.params), field)
    if opt_cfg.type == "sgd" and p["nesterov"] and (p["momentum"] <= 0 or p["dampening"] != 0):
        raise ConfigError([(f"{field}.nesterov", "Nesterov momentum needs momentum > 0 and dampening 0")])
    if opt_cfg.type == "adafactor" and p["warmup_init"] and not p["relative_step"]:
        raise ConfigError([(f"{field}.warmup_init", "needs relative_step: true (Adafactor's own LR warmup)")])
    try:
        return OPTIMIZERS[opt_cfg.type](params, lr, p)
    except ConfigError:
        raise
    except ValueError as e:  # torch's own range checks (e.g. 'Invalid beta parameter at index 0: 1.5')
        raise ConfigError([(field, f"{opt_cfg.type} rejected its parameters: {e}")]) from None


class OptimizerSet:
    """The optimizers and schedules of every trained component, stepped together."""

    def __init__(self, optimizers: dict, schedules: dict, train_steps: dict, self_scheduled: set):
        self.optimizers, self.schedules = optimizers, schedules
        self.train_steps = train_steps  # component -> steps it trains (two-phase text encoder: fewer)
        self.self_scheduled = self_scheduled
        self.global_step = 0
        self.warnings: list[str] = []  # for the trainer to emit as `warning` events (e.g. after a resume)
        self._last_lrs = {c: s.lr for c, s in schedules.items()}

    def trainable(self, component: str) -> bool:
        """False once a component's training is over (the two-phase cut-off): the trainer then freezes it."""
        return component in self.optimizers and self.global_step < self.train_steps[component]

    def _apply_lr(self, component: str) -> None:
        if component in self.self_scheduled:
            return
        lr = self.schedules[component].lr
        for group in self.optimizers[component].param_groups:
            group["lr"] = lr

    def observe_validation(self, val_loss: float) -> None:
        """The validation loss, for the ReduceLROnPlateau schedules that watch it."""
        for comp, schedule in self.schedules.items():
            if self.trainable(comp):
                schedule.observe_validation(val_loss)

    def step(self, loss: float | None = None) -> None:
        """optimizer.step() then the schedule, for every component still training. `loss` (the training loss)
        drives a ReduceLROnPlateau that watches the training loss."""
        lrs = {}
        for comp, opt in self.optimizers.items():
            if not self.trainable(comp):
                lrs[comp] = 0.0
                continue
            self._apply_lr(comp)
            opt.step()
            lrs[comp] = self._current_lr(comp)
            self.schedules[comp].advance(loss)
        self._last_lrs = lrs
        self.global_step += 1

    def _current_lr(self, comp: str) -> float:
        if comp not in self.self_scheduled:
            return self.schedules[comp].lr
        return _adafactor_lr(self.optimizers[comp])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for comp, opt in self.optimizers.items():
            opt.zero_grad(set_to_none=set_to_none)

    def lrs(self) -> dict[str, float]:
        """The LR each component used in the last step (before the first step: the LR it will use; 0.0 once a
        component stopped training)."""
        if self.global_step == 0:
            return {c: (self._current_lr(c) if c in self.self_scheduled else self.schedules[c].lr)
                    for c in self.optimizers}
        return dict(self._last_lrs)

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "last_lrs": dict(self._last_lrs),
                "components": {c: {"type": _type_name(self.optimizers[c]),
                                   "optimizer": self.optimizers[c].state_dict(),
                                   "schedule": self.schedules[c].state_dict()} for c in self.optimizers}}

    def load_state_dict(self, sd: dict, preserve_lr: bool = False) -> None:
        """Continue a run: optimizer state and schedule position per component. A component the saved run did not
        train starts fresh at the saved step. preserve_lr: keep the saved LR even if the schedule changed."""
        self.global_step = int(sd["global_step"])
        for comp in self.optimizers:
            saved = sd["components"].get(comp)
            if saved is None:
                self.schedules[comp].step = min(self.global_step, self.train_steps[comp])
                continue
            if saved.get("type", _type_name(self.optimizers[comp])) == _type_name(self.optimizers[comp]):
                self.optimizers[comp].load_state_dict(saved["optimizer"])
            else:  # a new optimizer type on resume is allowed; its moments start fresh
                self.warnings.append(f"optimizers.{comp}: the saved run used {saved['type']}; "
                                     f"{_type_name(self.optimizers[comp])} starts with fresh state")
            self.schedules[comp].load_state_dict(saved["schedule"], preserve_lr=preserve_lr)
            self._apply_lr(comp)
        self._last_lrs = {c: sd.get("last_lrs", {}).get(c, self.schedules[c].lr) for c in self.optimizers}


def _type_name(opt) -> str:
    """The optimizer's own class name, also when accelerate has wrapped it (AcceleratedOptimizer.optimizer)."""
    return type(getattr(opt, "optimizer", opt)).__name__


def _adafactor_lr(opt) -> float:
    """The LR Adafactor (relative_step) used last, computed as Adafactor itself does; 0.0 before its first step."""
    opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper has no _get_lr
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p)
            if state:
                return float(type(opt)._get_lr(group, state))
    return 0.0


def build_optimizers(optimizers_cfg: dict, schedules_cfg: dict, params: dict[str, list],
                     total_steps: int, te_lr_ratio: float, te_train_steps: int | None = None,
                     plateau_watches: str = "train_loss_ema") -> OptimizerSet:
    """An OptimizerSet for the components in `params` that have trainable parameters (others are left out).
    plateau_watches: what a ReduceLROnPlateau schedule watches (schedules.PLATEAU_WATCHES)."""
    components = [c for c, ps in params.items() if ps]
    base_lrs = component_base_lrs(optimizers_cfg, components, te_lr_ratio)
    optimizers, schedules, train_steps, self_scheduled = {}, {}, {}, set()
    for comp in components:
        steps = train_steps_of(comp, total_steps, te_train_steps)
        optimizers[comp] = make_optimizer(optimizers_cfg[comp], list(params[comp]), base_lrs[comp],
                                          f"optimizers.{comp}")
        try:
            schedules[comp] = Schedule(schedules_cfg[comp], base_lrs[comp], steps, f"schedules.{comp}",
                                       plateau_watches=plateau_watches)
        except ValueError as e:
            key, _, msg = str(e).partition(": ")
            raise ConfigError([(key, msg)]) from None
        train_steps[comp] = steps
        if picks_own_lr(optimizers_cfg[comp]):
            self_scheduled.add(comp)
    optim_set = OptimizerSet(optimizers, schedules, train_steps, self_scheduled)
    for comp in components:
        optim_set._apply_lr(comp)
    return optim_set
