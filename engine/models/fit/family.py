"""What the estimate needs of a family, as data: each family folder's memory.py fills in a FamilyMemory
(MEMORY = {name: FamilyMemory(...)}), and engine.models.families.memory_model(name) finds it. Torch-free, like all
of "will it fit": the GUI's gauge and the dry run import it."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlockLayout:
    """How a family's denoiser files name its transformer blocks, so the header reader counts the blocks (block
    swap), what fp8 leaves alone and the LoRA linears. The default has no blocks (a UNet: nothing to swap)."""

    block: re.Pattern | None = None     # a block's tensors: group 1 its kind, group 2 its index
    double_kinds: tuple = ()            # the kinds that run first, as double-stream blocks (FLUX)
    renamed_kinds: tuple = ()           # kinds that say the file names its modules another way (BFL's layout)
    rename: Callable | None = None      # (module in such a file) -> the diffusers modules it holds, in row order
    width_keys: tuple = ()              # a weight whose rows are the denoiser's width (FLUX: img_in, x_embedder)
    guidance_keys: tuple = ()           # a key holding one of these: the denoiser has a guidance embedding
    # the kinds in run order, each as the names its files give it, when there are more than double and single
    # ones (Z-Image: noise refiners, context refiners, main layers); empty: the double_kinds first, then the rest
    kinds: tuple = ()
    # a key holding one of these says the file names its modules another way, where its block kinds are named
    # alike in both layouts (Z-Image's native fused `attention.qkv.`); renamed_kinds says it for FLUX's BFL files
    renamed_marks: tuple = ()

    def match(self, name: str) -> re.Match | None:
        return self.block.match(name) if self.block is not None else None

    def rank(self, kind: str) -> int:
        """A block kind's place in the run order (blocks sort by it, then by their index)."""
        return next((i for i, names in enumerate(self.kinds) if kind in names),
                    0 if kind in self.double_kinds else 1)

    def kind_name(self, kind: str) -> str:
        """The kind as the family's memory model knows it: the first name of its group in `kinds`."""
        return next((names[0] for names in self.kinds if kind in names), kind)


NO_BLOCKS = BlockLayout()


@dataclass(frozen=True)
class FamilyMemory:
    """What the estimate needs of a family. A copy of a few Family fields (the records import torch);
    tests/test_fit.py checks that the targets agree with the family records."""

    label: str
    denoiser: str                       # the diffusers folder of the denoiser
    text_encoders: tuple                # pipeline names, in order
    text_encoder_labels: tuple
    trainable_text_encoders: tuple      # which get LoRA with network.train_text_encoder
    lora_targets: tuple
    activations: Callable               # (denoiser Component, Settings, text tokens) -> (bytes at the peak, tokens)
    text_tokens: tuple                  # text tokens per caption (with a guidance embedding, without)
    text_width: int                     # width of the cached text states, when the encoders are not read
    cached_states: tuple                # the text encoders whose hidden states are cached (not only pooled)
    known: dict                         # component -> parameter count of the real model, when no file is found
    known_denoiser: Callable | None = None      # model.path -> the denoiser's Tensors (a FLUX layout in full)
    # (component, model.path) -> that component's Tensors in the real model model.path names, or None for `known`:
    # for a family whose models differ in more than the denoiser (FLUX.2 klein 4B / 9B: Qwen3-4B / Qwen3-8B)
    known_parts: Callable | None = None
    known_lora_per_rank: int = 0        # UNets without files: LoRA parameters per rank on the default targets
    known_fp8_bnb: tuple = (0, 0)       # UNets without files: (fp8_params, bnb_params)
    modulation_targets: tuple = ()
    lora_scope: str = ""                # a regex: LoRA targets are matched only inside modules it matches
    te_lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "out_proj")
    single_file_prefixes: dict = field(default_factory=dict)   # checkpoint key prefix -> component
    layout: BlockLayout = NO_BLOCKS     # how its files name the denoiser's blocks
    # component -> the model.* key of its separate file (FLUX: text_encoder -> clip_l_path); read when set
    separate_keys: dict = field(default_factory=lambda: {"vae": "vae_path"})
    # block swap's pinned copies as PyTorch's caching host allocator sizes them, each tensor rounded up to a power
    # of two (aten/src/ATen/core/CachingHostAllocator.h: PowerOf2Ceil): 1.5x the bytes for Z-Image's blocks. Off:
    # the plain bytes (FLUX's figures were checked that way; turning it on for FLUX is a change of its figures)
    pinned_rounding: bool = False
    # hidden states of the text width alive per caption token while the encoder caches them (0: figures'
    # ENCODER_LIVE_STATES, T5's); Qwen3 with output_hidden_states keeps every layer's
    encoder_live_states: float = 0
    # hidden states of each cached encoder stacked per caption token (FLUX.2 klein caches 3 of Qwen3's layers): the
    # cache is that many times the encoder's width, while encoder_live_states stay in units of the width itself
    cached_layers: int = 1
    # per caption token, the vocabulary logits the encoder's forward also returns while it encodes (FLUX.2 klein's
    # pipeline runs Qwen3ForCausalLM, head and all: 151,936 per token, more than all its hidden states of the 4B)
    encoder_logits: int = 0
