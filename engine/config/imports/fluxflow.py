"""FluxFlow's optim_sched_config JSON: {"optimizers": {component: {type, lr, ...}}, "schedulers": {component: ...}}.

Components: flow / flow_processor (the denoiser: Easel's unet), vae / vae_encoder, text_encoder, discriminator.
Types are matched without case ("AdamW" is adamw). A file with a VAE but no flow component is a VAE run
(training.mode vae, with vae.gan when it has a discriminator); FluxFlow's joint flow + VAE training is two Easel
runs, so the VAE's sections are kept for that run and said so.
"""
from __future__ import annotations

from pathlib import Path

from engine.config.optim_specs import OPTIMIZER_PARAMS, SCHEDULE_PARAMS
from engine.config.schema import COMPONENT_ALIASES, COMPONENTS as EASEL_COMPONENTS, OptimizerConfig, ScheduleConfig

# FluxFlow's component names -> Easel's (flow / transformer as the schema maps them, and FluxFlow's long names)
COMPONENTS = {**{c: c for c in EASEL_COMPONENTS}, **COMPONENT_ALIASES, "flow_processor": "unet",
              "vae_encoder": "vae"}


def detect(data: dict) -> bool:
    keys = set(data)
    return bool(keys) and keys <= {"optimizers", "schedulers", "optimizer_config", "scheduler_config"}


def convert(data: dict, folder: Path) -> tuple[dict, list[str]]:
    preset: dict = {"version": 1, "optimizers": {}, "schedules": {}}
    unmapped: list[str] = []
    sections = (("optimizers", data.get("optimizers") or data.get("optimizer_config") or {}, OPTIMIZER_PARAMS),
                ("schedules", data.get("schedulers") or data.get("scheduler_config") or {}, SCHEDULE_PARAMS))
    for easel, given, table in sections:
        source = "optimizers" if easel == "optimizers" else "schedulers"
        for comp, spec in given.items():
            target = COMPONENTS.get(comp)
            if target is None:
                unmapped.append(f"{source}.{comp}: not a component Easel trains (unet/flow, text_encoder, vae, "
                                f"discriminator)")
                continue
            if target in preset[easel]:
                unmapped.append(f"{source}.{comp}: {target} is given already (by another of its names)")
                continue
            preset[easel][target] = _section(spec, table, f"{source}.{comp}", unmapped)
    comps = set(preset["optimizers"]) | set(preset["schedules"])
    if "vae" in comps and "unet" not in comps:
        preset["training"] = {"mode": "vae"}
        if "discriminator" in comps:
            preset["vae"] = {"gan": True}
    elif "vae" in comps:
        unmapped.append("vae: FluxFlow trains the flow and the VAE together; in Easel they are two runs. The vae "
                        "sections are kept for a run with training.mode: vae")
    return preset, unmapped


def _section(spec: dict, table: dict, where: str, unmapped: list) -> dict:
    """One component's optimizer or schedule with Easel's type name; parameters the type does not have are listed."""
    kinds = {name.lower(): name for name in table}
    kind = kinds.get(str(spec.get("type", "")).lower().replace("-", "").replace("_", ""),
                     kinds.get(str(spec.get("type", "")).lower()))
    out: dict = {}
    if kind is None:
        default = (OptimizerConfig if table is OPTIMIZER_PARAMS else ScheduleConfig)().type
        unmapped.append(f"{where}.type = {spec.get('type')}: not a type Easel has ({', '.join(table)}); "
                        f"{default} is used")
        kind = default
    out["type"] = kind
    own = {"type", "lr"} if table is OPTIMIZER_PARAMS else {"type", "warmup_steps", "lr_decay_steps"}
    for key, value in spec.items():
        if key == "type":
            continue
        if kind == "ReduceLROnPlateau" and key == "mode" and value == "max":
            unmapped.append(f"{where}.mode = max: Easel's plateau watches a loss, which falls as training improves; "
                            f"min is used")
            continue
        if key in own or key in table[kind]:
            out[key] = value
        else:
            unmapped.append(f"{where}.{key} = {value}: {kind} has no such parameter in Easel")
    return out
