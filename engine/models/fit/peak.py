"""The predicted peak VRAM and system RAM of a training run with given Settings on a model of given sizes.

The model of a training step:
    VRAM = the denoiser's weights          params x bytes: compute dtype 2 (fp32 4); fp8 1 for what
                                           base_storage.store_in_fp8 casts (block Linears, weights and biases);
                                           int8 1 + an fp32 scale per row; nf4 0.5 + 4/64 (2-D weights)
           - the blocks in CPU RAM + the 2 largest of them on the card (one runs, the next is prefetched)
           + one layer in the compute dtype while it runs (fp8 / int8 / nf4)
         + what trains                     fp32 weight 4 + fp32 grad 4 + autocast's bf16 copy 2 + optimizer state
         + activations at the peak         the family's own model (FamilyMemory.activations, in its memory.py:
                                           FLUX per token and block, the UNets per latent pixel)
         + text encoders / VAE on the GPU  only when their outputs are not cached (nor while CLIP-L trains)
         + CUDA context 0.6 GB + 7 % allocator slack (neither is in torch.cuda.max_memory_allocated)
Phases (engine/training/setup.py's order): the text encoders cache their outputs first (on the GPU; the denoiser
waits in RAM, except an int8/nf4 one, which bitsandbytes puts on the GPU while loading), then the VAE caches latents,
then training; the VRAM peak is the largest. RAM while training: the process (~3 GB: Python, PyTorch, the CUDA
libraries), the text encoders and VAE waiting in RAM, the swapped blocks (with FamilyMemory.pinned_rounding their
pinned copies as PyTorch sizes them: each tensor a power of two), the text-embedding cache. RAM while loading
(flux/loading.py's order): the small parts, then the denoiser read in the compute dtype and then stored in fp8 (from
a single file: read tensor by tensor straight into fp8), then T5; int8/nf4 are quantized on the way to the GPU.
A file's pages that safetensors mapped and that were read once (the bf16 weights an fp8 copy was made of) are not
counted: clean page cache the system drops when short of RAM (tests/test_zimage_fit.py measures both).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from engine.models.fit.figures import (ALLOCATOR_SLACK, CAPTION_CHUNK, CUDA_CONTEXT_GB, ENCODER_LIVE_STATES, GB,
                                       MARGIN, OPTIMIZER_STATE_BYTES, PRECISION_BYTES, PROCESS_RAM_GB, TE_FP8_SHARE,
                                       TRAINED_BYTES, VAE_ENCODE_GB_PER_MPX)
from engine.models.fit.headers import Component
from engine.models.fit.settings import Settings
from engine.models.fit.sizes import ModelSizes, memory_of


@dataclass(frozen=True)
class Part:
    """One line of the estimate: what holds memory, and how much (GB) on the card and in RAM."""

    what: str
    vram_gb: float = 0.0
    ram_gb: float = 0.0


@dataclass(frozen=True)
class Estimate:
    vram_gb: float              # the predicted peak on the card (torch's peak + CUDA context + allocator slack)
    ram_gb: float               # the predicted peak of system RAM
    allocated_gb: float         # what torch.cuda.max_memory_allocated should report in the training phase
    phase: str                  # the phase of the VRAM peak: training | caching text | caching latents
    ram_phase: str              # the phase of the RAM peak: loading | training
    parts: tuple                # a Part per line: the training phase on the card, then RAM
    phases: dict = field(default_factory=dict)      # phase -> its predicted VRAM peak (GB)
    ram_phases: dict = field(default_factory=dict)  # loading | training -> its predicted RAM peak (GB)
    trained_params: int = 0
    tokens: int = 0             # FLUX: image + text tokens per sample
    notes: tuple = ()
    model: tuple = ()           # (label, parameters, the files' dtype or "" for a known size) per component
    margin: float = MARGIN
    text_encoder_fp8: bool = False  # the settings stored the text encoders in fp8 (what the words may still offer)

    @property
    def range_gb(self) -> tuple[float, float]:
        return self.vram_gb * (1 - self.margin), self.vram_gb * (1 + self.margin)


def quantized_bytes(params: int, fp8: int, bnb: int, rows: float, quantize: str, compute_bytes: int) -> float:
    """Bytes of weights (a component's or a block's) with quantize_base none | fp8 | int8 | nf4."""
    if quantize == "fp8":      # diffusers layerwise casting: Linear/conv weights and biases in float8_e4m3fn
        return fp8 + (params - fp8) * compute_bytes
    if quantize == "int8":     # bitsandbytes LLM.int8: int8 weights + an fp32 scale per output row
        return bnb + rows * 4 + (params - bnb) * compute_bytes
    if quantize == "nf4":      # 4-bit codes + an fp32 absmax per 64 weights (bitsandbytes' default block size)
        return bnb * 0.5 + bnb / 64 * 4 + (params - bnb) * compute_bytes
    return params * compute_bytes


def block_bytes(c: Component, quantize: str, compute_bytes: int) -> list[float]:
    """Bytes of each transformer block's weights, in run order."""
    rows_per_param = c.bnb_rows / c.bnb_params if c.bnb_params else 0.0
    return [quantized_bytes(p, f, b, b * rows_per_param, quantize, compute_bytes) for p, f, b in c.blocks]


def pinned_bytes(c: Component, block: int, quantize: str, compute_bytes: int) -> int:
    """Bytes of pinned CPU RAM that block swap's copies of one block's frozen tensors take: the caching host
    allocator gives each tensor a power of two (aten/src/ATen/core/CachingHostAllocator.h, PowerOf2Ceil). int8 and
    nf4 are counted at their codes' bytes (their scales are small)."""
    def one(numel: int, in_fp8: bool, in_bnb: bool) -> int:
        size = {"fp8": 1 if in_fp8 else compute_bytes, "int8": 1 if in_bnb else compute_bytes,
                "nf4": 0.5 if in_bnb else compute_bytes}.get(quantize, compute_bytes) * numel
        return 1 << max(0, math.ceil(size) - 1).bit_length() if size else 0

    return sum(one(*t) for t in c.block_tensors[block])


def swapped_blocks(c: Component, n: int) -> list[int]:
    """The blocks (indices in run order) that model.block_swap = n keeps in CPU RAM: the last n that run (FLUX: the
    single blocks from the last one back, then the double blocks), as sd-scripts' offloader takes the last blocks."""
    return list(range(len(c.blocks)))[len(c.blocks) - min(n, len(c.blocks)):]


def lora_params(c: Component, targets: tuple, rank: int, scope: str = "") -> int:
    """LoRA parameters on the Linear layers whose name (after the `scope` prefix, a regex; '' for any layer) is a
    target or ends with '.' + a target, as peft and families/flux/record.py's lora_target_names match them."""
    total = 0
    for name, fan_in, fan_out in c.linears:
        inside = re.match(scope, name) if scope else None
        if scope and not inside:
            continue
        local = name[inside.end():] if inside else name
        if any(local == t or local.endswith("." + t) for t in targets):
            total += rank * (fan_in + fan_out)
    return total


def estimate(sizes: ModelSizes, s: Settings) -> Estimate:
    """The predicted peak VRAM and RAM of a run with settings `s` on the model `sizes`."""
    spec, den = memory_of(sizes.family), sizes.denoiser
    compute = PRECISION_BYTES[s.precision]
    full = s.network_type == "full"
    quantize = "none" if full else s.quantize_base
    weight_bytes = 4 if full else compute      # a full fine-tune trains (and keeps) the weights in fp32
    parts = []

    # the denoiser's weights, less the blocks waiting in CPU RAM (two are on the card: one runs, the next arrives)
    weights = quantized_bytes(den.params, den.fp8_params, den.bnb_params, den.bnb_rows, quantize, weight_bytes)
    blocks = block_bytes(den, quantize, weight_bytes)
    swapped = [] if full else swapped_blocks(den, s.block_swap)
    swapped_gb = sum(blocks[i] for i in swapped) / GB
    # ... and in RAM: their pinned copies, each tensor a power of two (families whose figures were checked so)
    pinned_gb = sum(pinned_bytes(den, i, quantize, weight_bytes) for i in swapped) / GB \
        if spec.pinned_rounding and den.block_tensors else swapped_gb
    in_flight = sum(sorted((blocks[i] for i in swapped), reverse=True)[:2])
    # one layer at a time runs in the compute dtype: the largest of a block's (FLUX: a modulation linear)
    in_blocks = [fan_in * fan_out for name, fan_in, fan_out in den.linears if spec.layout.match(name)] or \
        [fan_in * fan_out for _, fan_in, fan_out in den.linears]
    cast_up = max(in_blocks, default=0) * compute if quantize != "none" else 0
    label = s.precision if quantize == "none" else quantize
    where = f", {len(den.blocks) - len(swapped)} of {len(den.blocks)} blocks on the card" if swapped else ""
    parts.append(Part(f"{den.name} weights ({label}{where})", (weights + in_flight + cast_up) / GB - swapped_gb))

    # what trains: LoRA (or the whole denoiser) in fp32, its gradients and the optimizer's state
    state = OPTIMIZER_STATE_BYTES[s.optimizer] + (4 if s.optimizer == "sgd" and s.sgd_momentum > 0 else 0)
    if full:
        trained, per_param = den.params, 4 + state      # the fp32 weights are counted above
    else:
        targets = s.targets or spec.lora_targets + (spec.modulation_targets if s.lora_modulation else ())
        trained = lora_params(den, targets, s.rank, spec.lora_scope) if den.linears else \
            spec.known_lora_per_rank * s.rank
        if s.train_text_encoder:
            trained += sum(lora_params(sizes.components[n], spec.te_lora_targets, s.rank)
                           for n in spec.trainable_text_encoders)
        per_param = TRAINED_BYTES + state
    what = "full fine-tune" if full else f"LoRA rank {s.rank}"
    parts.append(Part(f"{what}: {trained / 1e6:.1f} M trained params, gradients, {s.optimizer} state",
                      trained * per_param / GB))

    text_tokens = s.text_tokens or spec.text_tokens[0 if den.guidance else 1]
    act, tokens = spec.activations(den, s, text_tokens)
    checkpointing = "gradient checkpointing" if s.gradient_checkpointing else "no checkpointing"
    parts.append(Part(f"activations: {s.resolution_px} px, batch {s.batch_size}, {checkpointing}", act / GB))

    # as engine/data/cache.py's prepare_batches: no text cache while a text encoder trains (T5 stays too)
    trains_te = s.train_text_encoder and not full
    cache_text = s.cache_text and not trains_te
    live = [] if cache_text else list(spec.text_encoders)
    for name, te_label in zip(spec.text_encoders, spec.text_encoder_labels):
        if name in live:
            why = "trained" if trains_te and name in spec.trainable_text_encoders else "outputs not cached"
            te_gb = sizes.components[name].params * compute / GB
            parts.append(Part(f"{te_label} text encoder on the GPU ({why})", te_gb + 0.1))
    vae_gb = sizes.components["vae"].params * compute / GB
    encode_gb = VAE_ENCODE_GB_PER_MPX * s.resolution_px ** 2 / 1e6 * (2 / compute)
    if not s.cache_latents:
        parts.append(Part("VAE on the GPU (latents not cached)", vae_gb + encode_gb * s.batch_size))

    allocated = sum(p.vram_gb for p in parts)
    training = allocated * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GB
    parts.append(Part("CUDA context and allocator slack", training - allocated))
    # the caches are built before the denoiser comes to the card (bitsandbytes put it there while loading)
    on_card = weights / GB if quantize in ("int8", "nf4") else 0.0
    # model.text_encoder_fp8 keeps the frozen encoders' linears in 1 byte (setup.py's store_text_encoders)
    te_bytes = TE_FP8_SHARE + (1 - TE_FP8_SHARE) * compute if s.text_encoder_fp8 and not trains_te else compute
    tes_gb = sum(sizes.components[n].params for n in spec.text_encoders) * te_bytes / GB
    widths = [sizes.components[n].hidden for n in spec.cached_states]
    # the encoders' own width (what their live states are counted in) and the cached states' (cached_layers of it)
    encoder_width = sum(widths) if all(widths) else spec.text_width // spec.cached_layers
    text_width = encoder_width * spec.cached_layers
    live_states = spec.encoder_live_states or ENCODER_LIVE_STATES
    encoding_gb = CAPTION_CHUNK * text_tokens * (encoder_width * live_states + spec.encoder_logits) * compute / GB
    caching_text = (on_card + tes_gb + encoding_gb) * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GB
    caching_latents = (on_card + vae_gb + encode_gb) * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GB
    phases = {"training": training, "caching text": caching_text * cache_text,
              "caching latents": caching_latents * s.cache_latents}
    phase = max(phases, key=phases.get)

    # system RAM while training: the process, the parts waiting in RAM, the swapped blocks, the text cache
    parked = sum(sizes.components[n].params for n in spec.text_encoders if n not in live) * te_bytes / GB
    parked += vae_gb if s.cache_latents else 0.0
    text_cache = s.captions * text_tokens * text_width * compute / GB if cache_text else 0.0
    steady = [Part("Python, PyTorch and the CUDA libraries", 0.0, PROCESS_RAM_GB),
              Part("text encoders and VAE waiting in RAM", 0.0, parked),
              Part(f"text-embedding cache ({s.captions} captions)", 0.0, text_cache),
              Part(f"block swap: {len(swapped)} blocks wait in RAM", 0.0, pinned_gb),
              # zimage/preview.py: the distilled sibling waits in RAM between samples, stored as the base is
              Part(f"the preview {den.name} (model.preview_path), stored ({label})", 0.0,
                   weights / GB if s.preview else 0.0)]
    # ... and while loading (flux/loading.py's order: the small parts, the denoiser, which is read in the compute
    # dtype and then stored, then the largest text encoder; bitsandbytes quantizes on the way to the GPU)
    others = sorted(sizes.components[n].params * compute / GB for n in (*spec.text_encoders, "vae"))
    bnb = quantize in ("int8", "nf4")
    reading = (max(blocks, default=0) if bnb else weights if quantize == "fp8" and s.single_file
               else den.params * weight_bytes) / GB
    stored = 0.0 if bnb else weights / GB
    loading = [Part("Python, PyTorch and the CUDA libraries", 0.0, PROCESS_RAM_GB)]
    if reading + sum(others[:-1]) >= stored + sum(others):
        loading += [Part(f"{den.name} being read ({'quantized on the way to the GPU' if bnb else s.precision})",
                         0.0, reading), Part("the smaller parts read before it", 0.0, sum(others[:-1]))]
    else:
        loading += [Part(f"{den.name} stored ({label}) and every other part, all read", 0.0, stored + sum(others))]
    ram_steady = sum(p.ram_gb for p in steady)
    ram_loading = sum(p.ram_gb for p in loading)
    ram_phases = {"loading": ram_loading, "training": ram_steady}
    ram_phase = max(ram_phases, key=ram_phases.get)
    parts += [p for p in (loading if ram_phase == "loading" else steady) if p.ram_gb]
    beside = ("bitsandbytes puts the int8/nf4 transformer on the GPU while it loads, so it sits there beside the "
              "text encoders while they encode the captions")
    notes = sizes.notes + ((beside,) if on_card else ())
    labels = {spec.denoiser: den.name, **dict(zip(spec.text_encoders, spec.text_encoder_labels)), "vae": "VAE"}
    model = tuple((labels[n], c.params, c.dtype) for n, c in sizes.components.items())
    return Estimate(phases[phase], ram_phases[ram_phase], allocated, phase, ram_phase, tuple(parts), phases,
                    ram_phases, trained, tokens, notes, model, text_encoder_fp8=te_bytes < compute)

