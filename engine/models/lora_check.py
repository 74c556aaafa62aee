"""The LoRA load self-check: load a file we wrote into its pipeline as a user's UI would, and fail unless every
LoRA module in it found its layer (engine.training.checkpoints runs it on every saved file).

diffusers does not raise on keys that match no module: it logs a warning or drops them. So the check captures what
the diffusers/peft/transformers loggers and Python warnings say during the load, reads the unmatched keys out of
those messages, and counts the LoRA layers that landed. The messages go into the LoraLoadError or the returned
report, not to stdout: on a good file they are expected noise ("No LoRA keys associated to CLIPTextModel…" when the
text encoder was not trained, peft's notes about adapters), and engine.log is stdout.
"""
from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.models.lora import lora_layers, LoraLoadError

_SELF_CHECK_ADAPTER = "easel_self_check"


@dataclass
class SelfCheckReport:
    path: str
    modules_in_file: int      # LoRA modules (down/up pairs) in the file
    modules_loaded: int       # LoRA layers that received them in the pipeline
    warnings: list[str]
    layers_expected: int = 0  # the layers the file's modules stand for (a fused module: several, lora_naming.py)


def self_check(path: Path, pipeline, naming=None) -> SelfCheckReport:
    """Load `path` into `pipeline` with `load_lora_weights` as a user's UI would, and fail unless every key matched.

    diffusers does not raise on keys that match no module: it logs a warning (or drops them). So the warnings are
    captured, and the LoRA layers the file's modules stand for are compared with the layers that landed in the
    pipeline. The check uses its own adapter name and removes it afterwards, restoring which adapters were active and
    which parameters were trainable, so it can run on the training pipeline itself.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from engine.models.lora import denoiser_of
    from engine.models.lora_naming import naming_of

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    stems = [k.rsplit(".", 2)[0] for k in keys if k.endswith((".lora_down.weight", ".lora_A.weight",
                                                              ".lora.down.weight"))]
    denoiser = denoiser_of(pipeline)
    fused = (naming or naming_of(denoiser)).fused
    layers_expected = sum(fused.fused_size(s) if fused else 1 for s in stems)
    source, placed_here, unplaced = str(path), 0, []
    messages: list[str] = []
    by_shape = fused.shape_checked(stems, denoiser) if fused else set()
    if by_shape:  # modules diffusers cannot place at this width: checked against the layers' shapes here
        tensors = load_file(str(path))
        unplaced = fused.unplaced({k: v for k, v in tensors.items() if k.split(".")[0] in by_shape}, denoiser)
        placed_here = sum(fused.fused_size(s) for s in by_shape if s not in unplaced)
        source = {k: v for k, v in tensors.items() if k.split(".")[0] not in by_shape}
        messages.append(fused.shape_check_note(len(by_shape)))
    before = _pipeline_state(pipeline)
    try:
        if source:
            with _capture_warnings(messages):
                pipeline.load_lora_weights(source, adapter_name=_SELF_CHECK_ADAPTER, low_cpu_mem_usage=True)
        loaded = placed_here + sum(len(lora_layers(m, _SELF_CHECK_ADAPTER)) for m in _lora_components(pipeline).values())
    except Exception as exc:  # diffusers raises ValueError/KeyError/RuntimeError/AssertionError for keys it cannot place
        raise LoraLoadError(f"{path}: the LoRA does not load into {type(pipeline).__name__}: {exc!r}") from exc
    finally:
        with warnings.catch_warnings():  # peft notes that the deleted adapter was active: expected here
            warnings.simplefilter("ignore")
            _remove_self_check_adapter(pipeline, before)

    unmatched = _unmatched_keys(messages)
    unexpected, missing = _in_file_names(unmatched["unexpected"], keys) + unplaced, unmatched["missing"]
    if unexpected or missing or loaded != layers_expected:
        detail = "; ".join(f"{what}: {', '.join(names)}" for what, names in
                           (("file keys that match no layer", unexpected), ("layers the file left empty", missing))
                           if names) or " ".join(messages)
        raise LoraLoadError(f"{path}: the LoRA does not load fully into {type(pipeline).__name__} "
                            f"({loaded} of {layers_expected} LoRA modules placed); {detail}")
    return SelfCheckReport(str(path), len(stems), loaded, messages, layers_expected)


def _unmatched_keys(messages: list[str]) -> dict[str, list[str]]:
    """LoRA keys named in missing/unexpected-key reports (diffusers' peft warning, transformers' load report).

    Unexpected keys are always the file's; missing keys count only for our adapter, since reports about other
    adapters (the trainer's own, when checking on the training pipeline) are not about this file.
    """
    found = {"unexpected": set(), "missing": set()}
    for message in messages:
        for segment in re.split(r"\n|(?=Loading adapter weights)", message):
            low = segment.lower()
            if "unexpected" in low:
                kind, pattern = "unexpected", r"[\w.]*\.lora_[\w.]+"
            elif "missing" in low:
                kind, pattern = "missing", rf"[\w.]*\.{_SELF_CHECK_ADAPTER}\.[\w.]*"
            else:
                continue
            found[kind].update(k.replace(f".{_SELF_CHECK_ADAPTER}", "").rstrip(".") for k in re.findall(pattern, segment))
    return {kind: sorted(keys) for kind, keys in found.items()}


def _in_file_names(diffusers_keys: list[str], file_keys: list[str]) -> list[str]:
    """Name problems as the file does: a kohya file's `lora_unet_…_to_qq` rather than diffusers' `….to.qq.lora_A`."""
    file_modules = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in file_keys})
    names = []
    for key in diffusers_keys:
        underscored = re.sub(r"\.lora_[AB]\.weight$", "", key).replace(".", "_")
        matches = ([k for k in file_keys if k.endswith("." + key)]  # diffusers file: add the component prefix
                   or [m for m in file_modules if "." not in m and m.endswith(underscored)])  # kohya file
        names.extend(matches or [key])
    return sorted(set(names))


def _lora_components(pipeline) -> dict[str, torch.nn.Module]:
    return {name: getattr(pipeline, name) for name in pipeline._lora_loadable_modules
            if isinstance(getattr(pipeline, name, None), torch.nn.Module)}


def _pipeline_state(pipeline) -> dict:
    components = _lora_components(pipeline)
    return {
        "had_lora": any(lora_layers(m, a) for m in components.values() for a in _adapter_names(m)),
        "active": {n: list(m.active_adapters()) for n, m in components.items() if _adapter_names(m)},
        "trainable": {(n, p_name): p.requires_grad for n, m in components.items()
                      for p_name, p in m.named_parameters()},
    }


def _adapter_names(module) -> list[str]:
    return list(getattr(module, "peft_config", {}) or {})


def _remove_self_check_adapter(pipeline, before: dict) -> None:
    if not before["had_lora"]:
        pipeline.unload_lora_weights()  # back to plain Linear layers, as loaded
    else:
        components = _lora_components(pipeline)
        if any(_SELF_CHECK_ADAPTER in _adapter_names(m) for m in components.values()):
            pipeline.delete_adapters(_SELF_CHECK_ADAPTER)
        for name, active in before["active"].items():  # loading made the check's adapter the active one
            components[name].set_adapter(active if len(active) > 1 else active[0])
    params = {(name, p_name): p for name, m in _lora_components(pipeline).items() for p_name, p in m.named_parameters()}
    for key, trainable in before["trainable"].items():
        if key in params:
            params[key].requires_grad_(trainable)


@contextlib.contextmanager
def _capture_warnings(messages: list[str]):
    """Route WARNING+ records of the diffusers/peft/transformers loggers, and Python warnings, into `messages`.

    Their own console handlers are detached meanwhile: the report goes into the LoraLoadError (or the returned
    report) instead of a table of "MISSING" keys in engine.log that would be about the trainer's own adapter.
    """
    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler]
        lg.setLevel(min(lg.level or logging.WARNING, logging.WARNING))
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        messages.extend(str(w.message) for w in caught)
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
