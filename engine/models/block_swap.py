"""Block swapping (model.block_swap): N transformer blocks keep their frozen weights in pinned CPU RAM and borrow the
GPU only while they run; the next block's weights are copied on a side stream while the current one computes.

Why not diffusers' group offloading: it moves every parameter of a group, the trained LoRA weights included, so
their gradients and optimizer state would be split between devices, and it offloads right after the forward pass,
when backward still needs the weights. Here only frozen weights move (LoRA layers stay on the GPU), and the blocks
are recomputed in backward under gradient checkpointing (required with block swap), which fires the same hooks, so
the weights are back on the GPU exactly when backward needs them. sd-scripts' FLUX block swap follows the same idea.

On the CPU the swap is a copy from one CPU tensor to another: the hooks run, nothing changes (the tests use that).
"""
from __future__ import annotations

import torch


class BlockSwap:
    """Swap the frozen weights of `blocks` (the last N of the model's blocks) between CPU RAM and `device`."""

    def __init__(self, blocks: list[torch.nn.Module], device: str):
        self.blocks, self.device = blocks, torch.device(device)
        self.stream = torch.cuda.Stream() if self.device.type == "cuda" else None
        self.ready: dict[int, object] = {}               # block index -> the event its copy finishes with
        self.store = []                                  # per block: [(param, pinned CPU copy)]
        for i, block in enumerate(blocks):  # each block lets go of its own weights once copied: RAM never holds
            self.store.append(self._frozen(block))   # the swapped blocks twice (Z-Image fp8, 28 blocks: 6 GB)
            self._release(i)
        self.last = -1
        self.handles = []
        for i, block in enumerate(blocks):
            self.handles.append(block.register_forward_pre_hook(lambda m, a, i=i: self._before(i)))
            self.handles.append(block.register_forward_hook(lambda m, a, o, i=i: self._after(i)))

    def _frozen(self, block):
        pin = self.device.type == "cuda"
        pairs = []
        for p in block.parameters():
            if not p.requires_grad:  # one copy, pinned from the start (not a copy, then a pinned copy of it)
                pairs.append((p, torch.empty(p.shape, dtype=p.dtype, pin_memory=pin).copy_(p.data)))
        return pairs

    def _fetch(self, i: int) -> None:
        if i in self.ready or not 0 <= i < len(self.blocks):
            return
        if self.stream is None:
            for p, cpu in self.store[i]:
                p.data = cpu.clone()
            self.ready[i] = None
            return
        with torch.cuda.stream(self.stream):
            for p, cpu in self.store[i]:
                p.data = cpu.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[i] = event

    def _before(self, i: int) -> None:
        self._fetch(i)
        event = self.ready[i]
        if event is not None:
            torch.cuda.current_stream().wait_event(event)
        # forward runs blocks in rising order, backward's recomputation in falling order: prefetch the next one
        self._fetch(i + 1 if i >= self.last else i - 1)
        self.last = i

    def _after(self, i: int) -> None:
        self._release(i)

    def _release(self, i: int) -> None:
        for p, cpu in self.store[i]:
            p.data = cpu  # the GPU copy is freed once autograd (if it saved it) lets go
        self.ready.pop(i, None)

    def remove(self) -> None:
        """Put every block's weights back on the device and remove the hooks (before saving a full model)."""
        for h in self.handles:
            h.remove()
        for pairs in self.store:
            for p, cpu in pairs:
                p.data = cpu.to(self.device)


def swap_blocks(transformer, count: int, device: str, block_lists: tuple) -> BlockSwap | None:
    """Swap the last `count` blocks of a transformer whose blocks run in the order of `block_lists` (the family's
    Capabilities.block_lists; FLUX: its single blocks first, then double ones)."""
    if count <= 0:
        return None
    blocks = [b for name in block_lists for b in getattr(transformer, name)]
    return BlockSwap(blocks[-count:], device)


def move_except_swapped(module: torch.nn.Module, device: str, swap: BlockSwap | None) -> None:
    """`module.to(device)` for everything but the swapped blocks' frozen weights, which stay in CPU RAM (moving the
    whole transformer first would need the very VRAM block swap saves)."""
    if swap is None:
        module.to(device)
        return
    swapped = {id(p) for pairs in swap.store for p, _ in pairs}
    with torch.no_grad():
        for p in module.parameters():
            if id(p) not in swapped:
                p.data = p.data.to(device)
        for sub in module.modules():
            for name, buffer in sub._buffers.items():
                if buffer is not None:
                    sub._buffers[name] = buffer.to(device)
