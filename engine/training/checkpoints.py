"""When to save, what to keep, and the resume state.

    Cadence(output_cfg)          .due(step, epoch_ended, epoch)  every N steps / N minutes / N epochs
    checkpoint_stem(name, step)  the file name stem of a checkpoint; prune(folder, stem_prefix, keep_last)
    save_state(state_dir, ...)   everything a resume needs, in one file written atomically
    keep_state_with(folder, stem, state_file)   a checkpoint's own copy of that state (a hard link: no extra disk)
    load_state(state_file)       a state back (or a UserError saying there is nothing to resume)

The state file holds the trained weights (by parameter name), the optimizer set's state (optimizers + schedules),
every RNG the loop draws from, the EMA, and the data position (epoch, batch within the epoch), so a resumed run
ends where an uninterrupted one ends.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import torch

from engine.atomic import atomic_write
from engine.failures import UserError

STATE_FILE = "state.pt"


class Cadence:
    """Decides at each step boundary whether a checkpoint is due (OutputConfig's save_every_* fields)."""

    def __init__(self, output_cfg, clock=time.monotonic):
        self.every_n_steps = output_cfg.save_every_n_steps
        self.every_n_minutes = output_cfg.save_every_n_minutes
        self.every_n_epochs = output_cfg.save_every_n_epochs
        self._clock = clock
        self._last_save = clock()

    def due(self, step: int, epoch_ended: bool, epochs_done: int) -> bool:
        by_steps = self.every_n_steps > 0 and step % self.every_n_steps == 0
        by_epochs = epoch_ended and self.every_n_epochs > 0 and epochs_done % self.every_n_epochs == 0
        by_minutes = self.every_n_minutes > 0 and self._clock() - self._last_save >= self.every_n_minutes * 60
        return by_steps or by_epochs or by_minutes

    def saved(self) -> None:
        self._last_save = self._clock()


def checkpoint_stem(run_name: str, step: int) -> str:
    return f"{run_name}-step{step:06d}"


_STEP = re.compile(r"-step(\d{6,})")


def prune(folder: Path, run_name: str, keep_last: int) -> list[Path]:
    """Delete the files of all but the newest `keep_last` checkpoint steps (0 = keep all); returns what went."""
    if keep_last <= 0 or not folder.is_dir():
        return []
    by_step: dict[int, list[Path]] = {}
    for path in folder.iterdir():
        match = _STEP.search(path.name)
        if path.name.startswith(f"{run_name}-step") and match and not path.name.endswith(".tmp"):
            by_step.setdefault(int(match.group(1)), []).append(path)
    removed = []
    for step in sorted(by_step)[:-keep_last]:
        for path in by_step[step]:
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def rng_state(noise_generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "noise": noise_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, noise_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_names(modules: dict) -> dict[str, set[str]]:
    """{component: names of the parameters that train}, taken once when the network is added: a component whose
    training phase is over stops being trainable, but its weights still belong in the resume state."""
    return {comp: {name for name, p in module.named_parameters() if p.requires_grad}
            for comp, module in modules.items()}


def trained_weights(modules: dict, names: dict[str, set[str]]) -> dict[str, dict[str, torch.Tensor]]:
    """{component: {parameter name: tensor}} of the network's parameters (`names`), copied to the CPU."""
    return {comp: {name: p.detach().cpu().clone() for name, p in module.named_parameters() if name in names[comp]}
            for comp, module in modules.items()}


def restore_weights(modules: dict, saved: dict) -> None:
    for comp, module in modules.items():
        params = dict(module.named_parameters())
        missing = [name for name in saved.get(comp, {}) if name not in params]
        if missing or comp not in saved:
            raise UserError(f"The saved state does not match this model ({comp}: {len(missing)} unknown weights).",
                            "Resume with the same model and network settings the run started with.")
        with torch.no_grad():
            for name, tensor in saved[comp].items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def save_state(state_dir: Path, state: dict) -> Path:
    """Write the state atomically (tmp file, fsync, replace): a crash mid-save keeps the previous state."""
    return atomic_write(state_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def state_file(run_dir: Path, resume) -> Path:
    """The state a resume starts from: `resume` is True (the latest, RUN_DIR/state/state.pt) or a kept
    checkpoint's state file (engine.runs.checkpoint_state)."""
    return Path(resume) if isinstance(resume, (str, os.PathLike)) else Path(run_dir) / "state" / STATE_FILE


def require_state(path: Path) -> Path:
    """The state file, or a UserError saying there is nothing to resume (a stray state.pt.tmp does not count)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent.name == "checkpoints":
        raise UserError(f"Nothing to resume at that checkpoint: {path.name} does not exist (the checkpoint was saved "
                        f"by an Easel that kept only the latest state, or its state was pruned).",
                        f"Resume the latest state instead: python -m engine train --resume \"{path.parent.parent}\"")
    run_dir = path.parent.parent
    raise UserError(f"Nothing to resume: {path} does not exist (the run stopped before it saved any state).",
                    f"Start the run again instead of resuming it: python -m engine train \"{run_dir}\"")


CHECKPOINT_STATE_SUFFIX = ".state.pt"   # checkpoints/<run>-step000400.state.pt: that checkpoint's resume state


def checkpoint_state(path: str | Path) -> tuple[Path, Path] | None:
    """(run folder, resume state file) when `path` names a kept checkpoint: one of its files or folders in
    RUN_DIR/checkpoints/ (`mylora-step000400.safetensors`, `...-diffusers`, its `.state.pt`) or just its stem;
    None when it is not inside a run's checkpoints/ folder."""
    path = Path(path)
    if path.parent.name != "checkpoints" or not (path.parent.parent / "preset.yaml").is_file():
        return None
    match = _STEP.search(path.name)  # the stem is the name up to its step number, as checkpoint_stem writes it
    if not match:
        return None
    return path.parent.parent, path.parent / f"{path.name[:match.end()]}{CHECKPOINT_STATE_SUFFIX}"


def keep_state_with(folder: Path, stem: str, state: Path) -> Path:
    """checkpoints/<stem>.state.pt: the resume state of that checkpoint, so a run can go back to it (EveryDream2
    resumes from any kept checkpoint). A hard link costs no disk until state.pt is replaced by the next save
    (os.replace gives state.pt a new file; the link keeps this one); a drive without hard links gets a copy.
    prune() removes it with the checkpoint's other files (same stem)."""
    import shutil

    target = folder / f"{stem}{CHECKPOINT_STATE_SUFFIX}"
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(state, tmp)
    except OSError:  # FAT/exFAT drives, some network shares
        shutil.copyfile(state, tmp)
    os.replace(tmp, target)
    return target


def remove_unfinished_files(run_dir: Path) -> list[Path]:
    """Delete the *.tmp files a killed save left (atomic writes go through name.tmp): they never hold a whole file,
    and a stray state.pt.tmp must not make a run look trained."""
    removed = []
    for folder in (run_dir, run_dir / "state", run_dir / "checkpoints"):
        if folder.is_dir():
            for path in folder.glob("*.tmp"):
                _remove(path)
                removed.append(path)
    return removed


def load_state(path: Path) -> dict:
    path = require_state(path)
    # weights_only=False: the file also holds plain Python progress data; it is Easel's own file in the run folder
    return torch.load(path, map_location="cpu", weights_only=False)


# --- the trained network as files users load ---------------------------------------------------------------------
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def lora_path(folder: Path, stem: str, fmt: str) -> Path:
    """kohya files get the plain name (what A1111/ComfyUI users pick); other formats a suffix before .safetensors."""
    return folder / (f"{stem}.safetensors" if fmt == "kohya" else f"{stem}.{fmt}.safetensors")


def export_lora(folder: Path, stem: str, formats: list[str], denoiser, text_encoders: dict, pipeline, info,
                save_precision: str) -> list[tuple[Path, str]]:
    """Write the LoRA in every format, then load each file back into the pipeline (engine.models.lora_check.self_check).
    A file that does not load fully raises LoraLoadError: the run fails loudly rather than ship a broken file."""
    from engine.models.lora_check import self_check
    from engine.models.lora_export import save_lora

    written = []
    for fmt in formats:
        path = save_lora(lora_path(folder, stem, fmt), fmt, denoiser, text_encoders, info,
                         dtype=SAVE_DTYPES[save_precision])
        self_check(path, pipeline, info.naming)
        written.append((path, fmt))
    return written


def export_full(folder: Path, stem: str, pipeline) -> Path:
    """A full fine-tune as a diffusers folder (written beside, then renamed into place), checked by reloading it."""
    import shutil

    target = folder / f"{stem}-diffusers"
    tmp = folder / f"{stem}-diffusers.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp, safe_serialization=True)
    type(pipeline).from_pretrained(tmp)  # the self-check: the folder loads as a pipeline
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


class Ema:
    """An exponential moving average of the trained parameters (fp32 copies), swapped in while saving.

    ema <- decay * ema + (1 - decay) * weights after every `interval`-th optimizer step. The saved files and the
    samples hold the average; training continues from the raw weights. Its state is part of the resume state.
    """

    def __init__(self, params: list, decay: float, interval: int = 1):
        self.params, self.decay, self.interval = params, decay, interval
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        """After optimizer step `step` (counted from 1); None updates whatever the interval."""
        if step is not None and step % self.interval:
            return
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self):
        """The average in the parameters for the duration (a save), the raw weights back afterwards."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)

    def state_dict(self) -> list:
        return [s.cpu() for s in self.shadow]

    def load_state_dict(self, shadow: list) -> None:
        self.shadow = [s.to(p.device, torch.float32) for s, p in zip(shadow, self.params)]
