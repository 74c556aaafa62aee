"""The other models RL compares against, kept as weight states rather than copies of the model.

    old = WeightState(params)            # DiffusionNFT's old model: a copy of the trained weights only
    with old.swapped_in(params): ...     # the model predicts with the old weights, then gets its own back
    old.follow(params, decay)            # old <- decay old + (1 - decay) current
    with reference_weights(r)(): ...     # the reference: the base with its LoRA switched off

With a LoRA the trained weights are the adapter's (a few MB to ~100 MB), so the old model costs one adapter and the
reference nothing: the base weights are shared. A full fine-tune has no adapter to switch off: its reference is a
copy of the weights RL started from (one more model in memory), made only when rl.kl_beta > 0; a resumed full
fine-tune takes the weights it resumed with as its reference (saving a second model in every resume state would
double its size).
"""
from __future__ import annotations

import contextlib

import torch


class WeightState:
    """A copy of `params` (on their device, in their dtype) that can stand in for them."""

    def __init__(self, params: list):
        self.values = [p.detach().clone() for p in params]

    @contextlib.contextmanager
    def swapped_in(self, params: list):
        own = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, v in zip(params, self.values):
                p.copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(params, own):
                    p.copy_(v)

    @torch.no_grad()
    def follow(self, params: list, decay: float) -> None:
        if decay >= 1.0:
            return
        torch._foreach_lerp_(self.values, [p.detach() for p in params], 1.0 - decay)

    def state_dict(self) -> list:
        return [v.cpu() for v in self.values]

    def load_state_dict(self, values: list) -> None:
        self.values = [v.to(p.device, p.dtype) for v, p in zip(values, self.values)]


def reference_weights(r):
    """A context-manager factory: inside it the denoiser predicts as the reference model (RL's KL anchor)."""
    denoiser = r.comps.denoiser
    if r.preset.network.type != "full":
        @contextlib.contextmanager
        def adapter_off():
            denoiser.disable_adapters()
            try:
                yield
            finally:
                denoiser.enable_adapters()
        return adapter_off
    start = WeightState(r.params)
    return lambda: start.swapped_in(r.params)
