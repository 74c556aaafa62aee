"""Validation: the loss on the held-out split with fixed noise and fixed noise levels, so it is comparable from one
validation to the next (the training loss is not: every step draws new noise and levels), and the best-K files.

    validation_loss(r) -> float       the weighted MSE of the held-out samples, the same draws every time
    Best(folder, keep)                 keeps the K lowest-loss files in checkpoints/best/, named with their loss

Every family gets it: an SD or FLUX LoRA run with validation.fraction or validation.folder reports `val` events
and keeps its best LoRA files; no other trainer picks the best checkpoint for the user.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.sampling.render import eval_mode


def draws(shape, index: int, seed: int, objective, device, caps) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, t [1]) for held-out sample `index`: from its own generator, never from the training stream."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    noise = torch.randn(shape, generator=g)
    t = objective.sample_t(1, g, "cpu", image_tokens=caps.image_tokens(shape))
    return noise.to(device), t.to(device)


@torch.no_grad()
def validation_loss(r) -> float:
    """Mean per-sample loss over the held-out samples (one at a time: they may be in different buckets), in eval
    mode (LoRA dropout off) and, when EMA is on, with the EMA weights: what the saved files hold."""
    seed = r.preset.validation.seed
    losses, weights = [], []
    modules = [m for modules in r.trainables.values() for m in modules]
    with eval_mode(modules), (r.ema.applied() if r.ema else contextlib.nullcontext()):
        source = r.dataset_batches or r.batches  # during reflow r.batches holds the generated pairs
        for index in source.val_indices:
            with r.accelerator.autocast():
                batch = source([index], 0, 0, fixed=True)
                x0 = batch["latents"].to(r.device, torch.float32)
                noise, t = draws(x0.shape, index, seed, r.objective, r.device, r.family.caps)
                x_t = r.objective.add_noise(x0, noise, t).to(r.weight_dtype)
                pred = r.family.predict(r.comps, x_t, t, batch["cond"], batch["size_cond"])
            target = r.objective.target(x0, noise, t)
            losses.append(F.mse_loss(pred.float(), target.float()))
            weights.append(batch["loss_weight"].float().sum())
    total = torch.stack(losses) @ torch.stack(weights) / torch.stack(weights).sum()
    return total.item()


class Best:
    """The K lowest validation losses so far and their files in `folder` (checkpoints/best/); the state survives a
    resume (state_dict), and files of a loss that left the K best are deleted."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = Path(folder), keep
        self.entries: list[dict] = []   # {"loss", "step", "stem"} sorted by loss

    @property
    def best(self) -> float | None:
        return self.entries[0]["loss"] if self.entries else None

    def admits(self, loss: float) -> bool:
        return self.keep > 0 and (len(self.entries) < self.keep or loss < self.entries[-1]["loss"])

    def stem(self, run_name: str, epoch: int, step: int, loss: float) -> str:
        return f"{run_name}-epoch{epoch:03d}-step{step:06d}-val_loss{loss:.4f}"

    def add(self, loss: float, step: int, stem: str) -> None:
        """Record the files just written under `stem`; delete the ones that dropped out of the K best."""
        self.entries = sorted(self.entries + [{"loss": loss, "step": step, "stem": stem}], key=lambda e: e["loss"])
        for gone in self.entries[self.keep:]:
            for path in self.folder.glob(gone["stem"] + "*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        self.entries = self.entries[:self.keep]

    def state_dict(self) -> dict:
        return {"entries": list(self.entries)}

    def load_state_dict(self, state: dict | None) -> None:
        self.entries = list((state or {}).get("entries", []))
