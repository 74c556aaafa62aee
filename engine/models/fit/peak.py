"""Will it fit? The predicted peak VRAM and system RAM of a training run, before a single weight is loaded.

    sizes = model_sizes(preset.model)                  # parameter counts and dtypes from the safetensors headers
    settings = fit_settings(preset)                    # only the knobs that move memory
    fit = estimate(sizes, settings)                    # Estimate: the parts, peak VRAM, peak RAM, the margin
    options = advice(sizes, settings, free_vram_gb)    # ways to fit, cheapest first: fp8, block swap, 8-bit, px
    print("\\n".join(describe_fit(fit, options, gpu_name, free_vram_gb, ram_total_gb, ram_free_gb)))

Torch-free: the headers are read with safetensors' numpy backend (shapes and dtypes, no tensor data), so the dry
run and the GUI get an answer in well under a second. GB means 2**30 bytes here, as Windows Task Manager and the
system doctor count. Without local files (a Hub id, a missing path) the sizes of the real models stand in, and the
estimate says so: FLUX.1-dev transformer 11,901,408,320 parameters (schnell 11,891,178,560), T5-XXL encoder
4,762,310,656, CLIP-L 123,060,480, FLUX AE 83,819,683; SDXL UNet 2,567,463,684, SD1.5 UNet 859,520,964, SD2 UNet
865,910,724 (counted from the diffusers configs on the meta device; tests/test_fit.py checks the FLUX figures).

The model of a training step:
    VRAM = the denoiser's weights          params x bytes: compute dtype 2 (fp32 4); fp8 1 for what
                                           base_storage.store_in_fp8 casts (block Linears, weights and biases);
                                           int8 1 + an fp32 scale per row; nf4 0.5 + 4/64 (2-D weights)
           - the blocks in CPU RAM + the 2 largest of them on the card (one runs, the next is prefetched)
           + one layer in the compute dtype while it runs (fp8 / int8 / nf4)
         + what trains                     fp32 weight 4 + fp32 grad 4 + autocast's bf16 copy 2 + optimizer state
         + activations at the peak         FLUX: tokens x hidden x 2 B x units x batch (below);
                                           UNets: KiB per latent pixel x (H/8)(W/8) x batch (below)
         + text encoders / VAE on the GPU  only when their outputs are not cached (nor while CLIP-L trains)
         + CUDA context 0.6 GB + 7 % allocator slack (neither is in torch.cuda.max_memory_allocated)
    FLUX tokens per sample = (H/16)(W/16) image tokens + 512 T5 tokens (dev; schnell 256; training.max_sequence_length).
    FLUX units per token, measured here on the CPU (bf16 autocast, peft LoRA rank 16 on the engine's block linears,
    SDPA saving q, k, v, o and the log-sum-exp) with saved-tensor hooks, per block (bench/flux_memory.py prints
    them): a double block keeps 23.1, a single block 22.3, the layers outside the blocks 1.0. With gradient
    checkpointing a block keeps only its inputs, 1.26, and one block at a time is recomputed (23.1). A block's
    backward needs about 23 more at its peak (torch.profiler's memory timeline of a real-width block on the CPU).
    Without LoRA a block keeps 13.4, notes/performance-anchors.md §3's figure: LoRA keeps every adapted linear's
    input, so its activations are 1.7x those.
    UNet peaks per latent pixel (LoRA rank 16 on attention; the same hooks and timeline; without / with
    checkpointing): SD1.5 222 / 58 KiB, SD2 210 / 48, SDXL 400 / 51.
Phases (engine/training/setup.py's order): the text encoders cache their outputs first (on the GPU; the denoiser
waits in RAM, except an int8/nf4 one, which bitsandbytes puts on the GPU while loading), then the VAE caches latents,
then training; the VRAM peak is the largest. RAM while training: the process (~3 GB: Python, PyTorch, the CUDA
libraries), the text encoders and VAE waiting in RAM, the swapped blocks, the text-embedding cache. RAM while
loading (flux/loading.py's order): the small parts, then the denoiser read in the compute dtype and then stored in
fp8 (from a single file: read tensor by tensor straight into fp8), then T5; int8/nf4 are quantized on the way to
the GPU.

Checked against published figures (notes/performance-anchors.md, notes/flux-and-peers-2026.md; they do not say
whether their GB are 10**9 or 2**30 bytes, 7 % apart):
- HF blog "flux-qlora" (RTX 4090, 512x768, rank 4, 8-bit Adam, checkpointing, cached text): bf16 LoRA ~26 GB,
  NF4 ~9 GB. Here: 26.1 GB and 9.1 GB (training).
- SimpleTuner documentation/quickstart/FLUX.md (rank 16, all linears): "a bit more than 30G" without quantization,
  "a bit more than 18G" int8; its lowest-VRAM NF4 run (512 px, Lion 8-bit): 9090 MiB. Here at 1024 px 28.8 GB
  (31.0 in 10**9 bytes) and 17.1 GB int8; 9.2 GB NF4 at 512 px.
- sd-scripts docs/flux_train_network.md (fp8 base): 24 GB "batch size 2"; 16 GB "batch 1 and --blocks_to_swap".
  Here at 1024 px, fp8, AdamW8bit: batch 2 20.1 GB, batch 1 16.8 GB (over 16: block swap).
- LoRA_Easy_Training_Scripts#344 (RTX 5060 Ti 16 GB, fp8, AdamW8bit, resolution not said): 14.3-14.5 GB in use.
  Here 15.5 GB at 768 px, 14.5 GB at 512.
The margin is ±15 % until a GPU run calibrates it: bench/flux_memory.py --gpu measures the real peaks against these.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from engine.models.base_storage import FP8_SKIP_PATTERNS
from engine.models.families.flux.bfl_names import diffusers_modules_of

GB = 2**30
MARGIN = 0.15                 # the stated uncertainty of the estimate
PROCESS_RAM_GB = 3.0          # Python + PyTorch + the CUDA runtime libraries, resident in RAM
CUDA_CONTEXT_GB = 0.6         # CUDA context + cuBLAS workspace: on the card, outside PyTorch's allocator
ALLOCATOR_SLACK = 0.07        # reserved minus allocated at the peak (the caching allocator's fragmentation)
CAPTION_CHUNK, ENCODER_LIVE_STATES = 16, 8   # captions encoded at a time; states of the text width alive at the peak
VAE_ENCODE_GB_PER_MPX = 1.5   # VAE encoder activations per megapixel in bf16 (no gradients); doubled in fp32

DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2, "I16": 2, "U16": 2,
               "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# Bytes of optimizer state per trained parameter: bitsandbytes' 8-bit states are 1 byte each; Prodigy keeps
# exp_avg, exp_avg_sq, s and the initial weights; Adafactor's factored second moment is rows + cols per matrix,
# under 0.5 B per LoRA parameter; SGD keeps a momentum buffer only with momentum > 0.
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "lion": 4, "lion8bit": 1, "sgd": 0, "prodigy": 16,
                         "adafactor": 0.5}
EIGHT_BIT = {"adamw": "adamw8bit", "lion": "lion8bit"}
TRAINED_BYTES = 4 + 4 + 2     # fp32 weight + fp32 gradient + the bf16 copy autocast keeps during the step
RESOLUTIONS_PX = (1024, 768, 512, 384, 256)   # what the resolution saver offers, below the preset's

# FLUX activations in units of (hidden x 2 bytes) per token and sample (the docstring says how they were measured).
FLUX_DOUBLE_UNITS, FLUX_SINGLE_UNITS, FLUX_OUTSIDE_UNITS = 23.1, 22.3, 1.0
FLUX_CHECKPOINT_UNITS, FLUX_BACKWARD_UNITS = 1.26, 23.0

Tensors = dict  # name -> (shape tuple, safetensors dtype string such as "BF16")

_BLOCK = re.compile(r"^(?:model\.diffusion_model\.)?(transformer_blocks|double_blocks|single_transformer_blocks|"
                    r"single_blocks)\.(\d+)\.")
_DOUBLE_KINDS = ("transformer_blocks", "double_blocks")
_BFL_BLOCKS = ("double_blocks", "single_blocks")
_EMBEDDING_KEYS = ("shared.weight", "embed_tokens.weight", "token_embedding.weight")   # text encoders: (vocab, width)

# ------------------------------------------------------------------------------------------------ model sizes

@dataclass(frozen=True)
class Component:
    """One part of the model as stored, counted by what the memory settings do to it."""

    name: str                   # transformer | unet | text_encoder | text_encoder_2 | vae
    params: int
    stored_bytes: int           # as the files hold them (their dtypes)
    fp8_params: int = 0         # Linear/conv weights and biases that store_in_fp8 keeps in 1 byte
    bnb_params: int = 0         # in 2-D Linear weights: what bitsandbytes int8 / nf4 quantizes
    bnb_rows: int = 0           # their output rows (int8 keeps an fp32 scale per row)
    blocks: tuple = ()          # (params, fp8_params, bnb_params) of each transformer block, in run order
    doubles: int = 0            # how many of the blocks come first as double-stream blocks (FLUX)
    linears: tuple = ()         # (diffusers module name, in, out) of every Linear, for LoRA counts
    hidden: int = 0             # the width: FLUX's transformer, a text encoder's states
    guidance: bool = False      # has a guidance embedding (FLUX dev; schnell has none)
    source: str = ""            # the files read, or "known size of ..."
    dtype: str = ""             # the files' dtype of most parameters (BF16, F8_E4M3, ...); "" for known sizes

    @property
    def known(self) -> bool:
        return self.source.startswith("known")


def read_header(file: Path) -> Tensors:
    """{name: (shape, dtype)} of a .safetensors file, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(file), "np") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def _bfl_to_diffusers(name: str, shape: tuple, hidden: int) -> list[tuple[str, int, int]]:
    """A BFL-named FLUX block linear as the diffusers linears it holds (engine/models/families/flux/bfl_names.py's map; of a fused
    one, every part but the last has `hidden` rows): [(name, in, out)]."""
    if not _BLOCK.match(name):
        return []
    parts = diffusers_modules_of(name.removesuffix(".weight"))
    rows = [hidden] * (len(parts) - 1) + [shape[0] - hidden * (len(parts) - 1)]
    return [(part, shape[1], out) for part, out in zip(parts, rows)]


def component_from_tensors(name: str, tensors: Tensors, source: str) -> Component:
    """Count a component's tensors by what fp8, bitsandbytes, LoRA and block swap do with them."""
    params = stored = fp8 = bnb = rows = 0
    blocks: dict[tuple, list] = {}
    linears, by_dtype = [], {}
    bfl = any(_BLOCK.match(k) and _BLOCK.match(k)[1] in _BFL_BLOCKS for k in tensors)
    hidden = next((s[0] for k, (s, _) in tensors.items() if k.endswith(("img_in.weight", "x_embedder.weight"))),
                  next((s[1] for k, (s, _) in tensors.items() if k.endswith(_EMBEDDING_KEYS) and len(s) == 2), 0))
    for key, (shape, dtype) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        params += n
        stored += n * DTYPE_BYTES.get(dtype, 2)
        by_dtype[dtype] = by_dtype.get(dtype, 0) + n
        weight = key.endswith(".weight") and len(shape) >= 2
        of_weight = key.endswith(".bias") and len(tensors.get(key[:-5] + ".weight", ((),))[0]) >= 2
        in_fp8 = n if (weight or of_weight) and not _kept_out_of_fp8(key, bfl) else 0
        in_bnb = n if key.endswith(".weight") and len(shape) == 2 else 0
        fp8, bnb, rows = fp8 + in_fp8, bnb + in_bnb, rows + (shape[0] if in_bnb else 0)
        match = _BLOCK.match(key)
        if match:
            counts = blocks.setdefault((match[1] not in _DOUBLE_KINDS, int(match[2])), [0, 0, 0])
            counts[0], counts[1], counts[2] = counts[0] + n, counts[1] + in_fp8, counts[2] + in_bnb
        if in_bnb:
            module = key.removeprefix("model.diffusion_model.").removesuffix(".weight")
            linears += _bfl_to_diffusers(key, shape, hidden) if bfl else [(module, shape[1], shape[0])]
    order = sorted(blocks)
    return Component(name, params, stored, fp8, bnb, rows, tuple(tuple(blocks[k]) for k in order),
                     sum(1 for single, _ in order if not single), tuple(linears), hidden,
                     any("guidance_in." in k or "guidance_embedder." in k for k in tensors), source,
                     max(by_dtype, key=by_dtype.get, default=""))


def _kept_out_of_fp8(key: str, bfl: bool) -> bool:
    """True for a layer store_in_fp8 leaves in the compute dtype (engine/models/base_storage.py's patterns)."""
    module = key.removeprefix("model.diffusion_model.").rsplit(".", 1)[0]
    if bfl and not _BLOCK.match(module + "."):
        module = next(iter(diffusers_modules_of(module)), module)  # the diffusers name FP8_SKIP_PATTERNS is written in
    return not _BLOCK.match(module + ".") and any(re.search(p, module) for p in FP8_SKIP_PATTERNS)


def flux_tensors(double: int = 19, single: int = 38, hidden: int = 3072, mlp: int = 12288, head_dim: int = 128,
                 t5_width: int = 4096, clip_width: int = 768, in_channels: int = 64, guidance: bool = True,
                 dtype: str = "BF16") -> Tensors:
    """The tensors (names, shapes) of diffusers' FluxTransformer2DModel for a layout; the defaults are FLUX.1-dev."""
    t: Tensors = {}

    def linear(name, fan_in, fan_out):
        t[f"{name}.weight"], t[f"{name}.bias"] = ((fan_out, fan_in), dtype), ((fan_out,), dtype)

    linear("x_embedder", in_channels, hidden)
    linear("context_embedder", t5_width, hidden)
    embedders = [("timestep_embedder", 256)] + [("guidance_embedder", 256)] * guidance + [("text_embedder", clip_width)]
    for embedder, fan_in in embedders:
        linear(f"time_text_embed.{embedder}.linear_1", fan_in, hidden)
        linear(f"time_text_embed.{embedder}.linear_2", hidden, hidden)
    for i in range(double):
        b = f"transformer_blocks.{i}"
        for norm, ff in (("norm1", "ff"), ("norm1_context", "ff_context")):
            linear(f"{b}.{norm}.linear", hidden, 6 * hidden)
            linear(f"{b}.{ff}.net.0.proj", hidden, mlp)
            linear(f"{b}.{ff}.net.2", mlp, hidden)
        for proj in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            linear(f"{b}.attn.{proj}", hidden, hidden)
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            t[f"{b}.attn.{norm}.weight"] = ((head_dim,), dtype)
    for i in range(single):
        b = f"single_transformer_blocks.{i}"
        linear(f"{b}.norm.linear", hidden, 3 * hidden)
        linear(f"{b}.proj_mlp", hidden, mlp)
        linear(f"{b}.proj_out", hidden + mlp, hidden)
        for proj in ("to_q", "to_k", "to_v"):
            linear(f"{b}.attn.{proj}", hidden, hidden)
        for norm in ("norm_q", "norm_k"):
            t[f"{b}.attn.{norm}.weight"] = ((head_dim,), dtype)
    linear("norm_out.linear", hidden, 2 * hidden)
    linear("proj_out", hidden, in_channels)
    return t


# ------------------------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class Settings:
    """The preset values that move memory (fit_settings reads them from a preset; the savers change them)."""

    family: str
    quantize_base: str = "none"
    block_swap: int = 0
    precision: str = "bf16"
    batch_size: int = 1
    gradient_checkpointing: bool = True
    resolution_px: int = 512
    network_type: str = "lora"
    rank: int = 16
    targets: tuple = ()              # empty: the family's default LoRA targets
    lora_modulation: bool = False
    train_text_encoder: bool = False
    cache_text: bool = True          # text-encoder outputs cached, so the encoders leave the GPU (not while one trains)
    cache_latents: bool = True
    optimizer: str = "adamw"
    sgd_momentum: float = 0.0
    text_tokens: int = 0             # T5 tokens per caption; 0: the model's (512 dev, 256 schnell)
    captions: int = 0                # distinct captions, for the text cache in RAM (0: not known)
    single_file: bool = False        # model.path is one file: fp8 blocks are read straight into fp8 (flux_loading)


def local_path(text: str) -> Path:
    """A typed path with ~ expanded; '~nobody/x' (a home folder that does not exist) stays as typed, so it is
    simply not found instead of raising."""
    try:
        return Path(text.strip()).expanduser()
    except RuntimeError:
        return Path(text.strip())


def fit_settings(preset, captions: int = 0) -> Settings:
    """The Settings of a preset (engine.config.schema.Preset); `captions`: distinct captions, when known."""
    m, n, t, d = preset.model, preset.network, preset.training, preset.dataset
    opt = preset.optimizers["unet"]
    momentum = float(opt.params.get("momentum", 0.0) or 0.0) if opt.type == "sgd" else 0.0
    return Settings(
        family=m.family, quantize_base=m.quantize_base, block_swap=m.block_swap,
        precision="bf16" if t.precision == "auto" else t.precision,   # auto trains in a 2-byte type on any GPU
        batch_size=t.batch_size, gradient_checkpointing=t.gradient_checkpointing, resolution_px=d.resolution_px,
        network_type=n.type, rank=n.rank, targets=tuple(n.targets), lora_modulation=n.lora_modulation,
        train_text_encoder=n.train_text_encoder, cache_text=t.cache_text_embeddings and not d.shuffle_tags,
        cache_latents=t.cache_latents and not (d.random_crop or d.flip), optimizer=opt.type,
        sgd_momentum=momentum, text_tokens=t.max_sequence_length, captions=captions,
        single_file=bool(m.path.strip()) and local_path(m.path).is_file())


# ------------------------------------------------------------------------------------------------ activations

def flux_activations(c: Component, s: Settings, text_tokens: int) -> tuple[float, int]:
    """(bytes of FLUX activations at the peak of a LoRA step, tokens per sample); units: the module docstring."""
    tokens = (s.resolution_px // 16) ** 2 + text_tokens
    singles = len(c.blocks) - c.doubles
    if s.gradient_checkpointing:
        units = len(c.blocks) * FLUX_CHECKPOINT_UNITS + (FLUX_DOUBLE_UNITS if c.doubles else FLUX_SINGLE_UNITS)
    else:
        units = c.doubles * FLUX_DOUBLE_UNITS + singles * FLUX_SINGLE_UNITS
    units += FLUX_OUTSIDE_UNITS + FLUX_BACKWARD_UNITS
    return units * tokens * (c.hidden or 3072) * 2 * s.batch_size, tokens


def unet_activations(peak_kib: tuple[float, float], c: Component, s: Settings, text_tokens: int) -> tuple[float, int]:
    """(bytes of UNet activations at the peak of a step, 0): peak_kib per latent pixel (without, with checkpointing)."""
    kib = peak_kib[1] if s.gradient_checkpointing else peak_kib[0]
    return kib * 1024 * (s.resolution_px // 8) ** 2 * s.batch_size, 0


# ------------------------------------------------------------------------------------------------ the families

@dataclass(frozen=True)
class FamilyMemory:
    """What the estimate needs of a family. A copy of a few Family fields (engine.models.families imports torch);
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
    known_lora_per_rank: int = 0        # UNets without files: LoRA parameters per rank on the default targets
    known_fp8_bnb: tuple = (0, 0)       # UNets without files: (fp8_params, bnb_params)
    modulation_targets: tuple = ()
    lora_scope: str = ""                # a regex: LoRA targets are matched only inside modules it matches
    te_lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "out_proj")
    single_file_prefixes: dict = field(default_factory=dict)   # checkpoint key prefix -> component


# families/flux.py's DOUBLE_BLOCK_LINEARS + SINGLE_BLOCK_LINEARS (and MODULATION_LINEARS), inside the blocks
FLUX_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2", "proj_mlp", "proj_out")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_LDM_PREFIXES = {"model.diffusion_model.": "unet", "first_stage_model.": "vae", "cond_stage_model.": "text_encoder",
                 "conditioner.embedders.0.": "text_encoder", "conditioner.embedders.1.": "text_encoder_2"}
_SD_TEXT = ("text_encoder",)
FAMILIES = {
    "flux": FamilyMemory(
        "FLUX.1-dev", "transformer", ("text_encoder", "text_encoder_2"), ("CLIP-L", "T5-XXL"), ("text_encoder",),
        FLUX_TARGETS, flux_activations, (512, 256), 4096, ("text_encoder_2",),
        {"text_encoder": 123_060_480, "text_encoder_2": 4_762_310_656, "vae": 83_819_683},
        known_denoiser=lambda path: flux_tensors(guidance="schnell" not in path.lower()),
        modulation_targets=("norm1.linear", "norm1_context.linear", "norm.linear"),
        lora_scope=r"^(transformer_blocks|single_transformer_blocks)\.\d+\.",
        single_file_prefixes={"model.diffusion_model.": "transformer", "text_encoders.clip_l.": "text_encoder",
                              "text_encoders.t5xxl.": "text_encoder_2", "vae.": "vae", "": "transformer"}),
    "sdxl": FamilyMemory(
        "SDXL", "unet", ("text_encoder", "text_encoder_2"), ("CLIP-L", "OpenCLIP-bigG"),
        ("text_encoder", "text_encoder_2"), UNET_TARGETS, partial(unet_activations, (400.0, 51.0)), (77, 77), 2048,
        ("text_encoder", "text_encoder_2"),
        {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863},
        known_lora_per_rank=1_451_520, known_fp8_bnb=(2_559_556_160, 2_232_647_680),
        single_file_prefixes=_LDM_PREFIXES),
    "sd15": FamilyMemory(
        "SD 1.5", "unet", _SD_TEXT, ("CLIP-L",), _SD_TEXT, UNET_TARGETS, partial(unet_activations, (222.0, 58.0)),
        (77, 77), 768, _SD_TEXT, {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
        known_lora_per_rank=199_296, known_fp8_bnb=(857_246_720, 270_049_280), single_file_prefixes=_LDM_PREFIXES),
    "sd2": FamilyMemory(
        "SD 2.x", "unet", _SD_TEXT, ("OpenCLIP-H",), _SD_TEXT, UNET_TARGETS, partial(unet_activations, (210.0, 48.0)),
        (77, 77), 1024, _SD_TEXT, {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
        known_lora_per_rank=207_488, known_fp8_bnb=(863_636_480, 301_219_840), single_file_prefixes=_LDM_PREFIXES),
}


@dataclass(frozen=True)
class ModelSizes:
    family: str
    components: dict            # name -> Component
    notes: tuple = ()           # what was not found and what stands in for it

    @property
    def denoiser(self) -> Component:
        return self.components[FAMILIES[self.family].denoiser]


def _weights_of_folder(folder: Path) -> list[Path]:
    """The .safetensors files from_pretrained reads in a diffusers component folder (one variant, all shards)."""
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if not re.search(r"\.(fp16|bf16|fp32)(-\d+-of-\d+)?\.safetensors$", f.name)]
    return plain or files


def _read_folder(folder: Path, names) -> dict[str, Component]:
    """The components `names` of a diffusers folder that has weights for them."""
    found = {}
    for name in names:
        files = _weights_of_folder(folder / name)
        if files:
            tensors = {k: v for f in files for k, v in read_header(f).items()}
            found[name] = component_from_tensors(name, tensors, str(folder / name))
    return found


def _split_by_prefix(tensors: Tensors, prefixes: dict) -> dict[str, Tensors]:
    """A single checkpoint's tensors by component, from their key prefixes (the longest that matches)."""
    out: dict[str, Tensors] = {}
    ordered = sorted(prefixes, key=len, reverse=True)
    for key, value in tensors.items():
        prefix = next((p for p in ordered if key.startswith(p)), None)
        if prefix is not None:  # keys of no component (EMA copies, buffers) are left out
            kept = key if prefix == "model.diffusion_model." else key[len(prefix):]
            out.setdefault(prefixes[prefix], {})[kept] = value
    return out


def _known(family: str, name: str, model_path: str, why: str) -> Component:
    spec = FAMILIES[family]
    source = f"known size of the {spec.label} {name} ({why})"
    if name == spec.denoiser and spec.known_denoiser is not None:
        return replace(component_from_tensors(name, spec.known_denoiser(model_path), ""), source=source, dtype="")
    params = spec.known[name]
    fp8, bnb = spec.known_fp8_bnb if name == spec.denoiser else (0, 0)
    return Component(name, params, 2 * params, fp8, bnb, source=source)


def model_sizes(model) -> ModelSizes:
    """The sizes of the model's components (ModelConfig: family, path, clip_l_path, t5_path, vae_path) from the
    safetensors headers; a component not found locally is taken at the real model's size, and a note says so."""
    spec = FAMILIES[model.family]
    wanted = (spec.denoiser, *spec.text_encoders, "vae")
    path = local_path(model.path) if model.path.strip() else None
    found: dict[str, Component] = {}
    notes = []
    try:
        if path is not None and path.is_dir():
            found.update(_read_folder(path, wanted))
        elif path is not None and path.is_file() and path.suffix.lower() == ".safetensors":
            for name, tensors in _split_by_prefix(read_header(path), spec.single_file_prefixes).items():
                found[name] = component_from_tensors(name, tensors, str(path))
        config = local_path(model.single_file_config) if model.single_file_config.strip() else None
        if path is not None and path.is_file() and config is not None and config.is_dir():
            # single files: the parts not in the checkpoint may be in the config folder
            found.update(_read_folder(config, [n for n in wanted if n not in found]))
        separate = {"text_encoder": model.clip_l_path, "text_encoder_2": model.t5_path, "vae": model.vae_path}
        for name, file in separate.items():
            file = local_path(file) if file else None
            if name in wanted and file is not None and file.is_file() and file.suffix.lower() == ".safetensors":
                found[name] = component_from_tensors(name, read_header(file), str(file))
    except Exception as e:  # noqa: BLE001 - a damaged header: the loader names the file; the estimate falls back
        found, notes = {}, [f"the model files could not be read ({type(e).__name__}: {e})"]
    if path is None:
        why = "model.path is empty"
    elif not path.exists():
        why = f"{model.path} is not a file or folder on this PC"
    else:
        why = f"not found in {path.name}"
    for name in wanted:
        if name not in found:
            found[name] = _known(model.family, name, model.path, why)
    missing = [n for n in wanted if found[n].known]
    if missing:
        notes.append(f"{', '.join(missing)}: {why}, so the sizes of the real {spec.label} are used")
    return ModelSizes(model.family, found, tuple(notes))


# ------------------------------------------------------------------------------------------------ the estimate

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


def swapped_blocks(c: Component, n: int) -> list[int]:
    """The blocks (indices in run order) that model.block_swap = n keeps in CPU RAM: the last n that run (FLUX: the
    single blocks from the last one back, then the double blocks), as sd-scripts' offloader takes the last blocks."""
    return list(range(len(c.blocks)))[len(c.blocks) - min(n, len(c.blocks)):]


def lora_params(c: Component, targets: tuple, rank: int, scope: str = "") -> int:
    """LoRA parameters on the Linear layers whose name (after the `scope` prefix, a regex; '' for any layer) is a
    target or ends with '.' + a target, as peft and families/flux.py's lora_target_names match them."""
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
    spec, den = FAMILIES[sizes.family], sizes.denoiser
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
    in_flight = sum(sorted((blocks[i] for i in swapped), reverse=True)[:2])
    # one layer at a time runs in the compute dtype: the largest of a block's (FLUX: a modulation linear)
    in_blocks = [fan_in * fan_out for name, fan_in, fan_out in den.linears if _BLOCK.match(name)] or \
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
    tes_gb = sum(sizes.components[n].params for n in spec.text_encoders) * compute / GB
    widths = [sizes.components[n].hidden for n in spec.cached_states]
    text_width = sum(widths) if all(widths) else spec.text_width
    encoding_gb = CAPTION_CHUNK * text_tokens * text_width * compute * ENCODER_LIVE_STATES / GB
    caching_text = (on_card + tes_gb + encoding_gb) * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GB
    caching_latents = (on_card + vae_gb + encode_gb) * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GB
    phases = {"training": training, "caching text": caching_text * cache_text,
              "caching latents": caching_latents * s.cache_latents}
    phase = max(phases, key=phases.get)

    # system RAM while training: the process, the parts waiting in RAM, the swapped blocks, the text cache
    parked = sum(sizes.components[n].params for n in spec.text_encoders if n not in live) * compute / GB
    parked += vae_gb if s.cache_latents else 0.0
    text_cache = s.captions * text_tokens * text_width * compute / GB if cache_text else 0.0
    steady = [Part("Python, PyTorch and the CUDA libraries", 0.0, PROCESS_RAM_GB),
              Part("text encoders and VAE waiting in RAM", 0.0, parked),
              Part(f"text-embedding cache ({s.captions} captions)", 0.0, text_cache),
              Part(f"block swap: {len(swapped)} blocks wait in RAM", 0.0, swapped_gb)]
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
                    ram_phases, trained, tokens, notes, model)


# ------------------------------------------------------------------------------------------------ the savers

@dataclass(frozen=True)
class Saver:
    """One change that lowers the peak: its words, the preset keys it sets, and what it saves."""

    words: str                  # "fp8 base", "block swap 12", "adamw8bit", "512 px"
    changes: dict               # preset key -> value, e.g. {"model.quantize_base": "fp8"}
    saves_gb: float             # VRAM saved against the settings before it
    vram_gb: float              # the predicted peak with it (and the savers before it in its option)


def _candidates(kind: str, sizes: ModelSizes, s: Settings) -> list[tuple[str, dict, Settings]]:
    """The settings a saver offers, mildest first: [(words, preset changes, new settings)]."""
    if kind == "fp8" and s.quantize_base == "none" and s.network_type == "lora":
        return [("fp8 base", {"model.quantize_base": "fp8"}, replace(s, quantize_base="fp8"))]
    if kind == "block swap" and s.network_type == "lora":
        return [(f"block swap {n}", {"model.block_swap": n}, replace(s, block_swap=n))
                for n in range(s.block_swap + 1, len(sizes.denoiser.blocks) + 1)]
    if kind == "8-bit optimizer" and s.optimizer in EIGHT_BIT:
        eight = EIGHT_BIT[s.optimizer]
        return [(eight, {"optimizers.unet.type": eight}, replace(s, optimizer=eight))]
    if kind == "resolution":
        return [(f"{px} px", {"dataset.resolution_px": px}, replace(s, resolution_px=px))
                for px in RESOLUTIONS_PX if px < s.resolution_px]
    return []


SAVERS = ("fp8", "block swap", "8-bit optimizer", "resolution")   # cheapest first: in speed, then quality


def advice(sizes: ModelSizes, s: Settings, budget_gb: float) -> list[tuple[Saver, ...]]:
    """Ways to bring the training peak under budget_gb, best first; [] when it fits already. Each option is a tuple
    of savers turned on together. The first is the cheapest path: the savers in cost order (SAVERS), each at its
    mildest setting that fits, or at its strongest before the next one is added. Then every saver that fits on its
    own (at its mildest setting that does). An option whose last saver's vram_gb is over the budget falls short.
    (The caching phases are not helped by these savers; Estimate.phases has them.)"""
    def peak(settings: Settings) -> float:
        return estimate(sizes, settings).phases["training"]

    start = peak(s)
    if start <= budget_gb:
        return []
    path, current, before = [], s, start
    for kind in SAVERS:
        candidates = _candidates(kind, sizes, current)
        peaks = [peak(cand) for _, _, cand in candidates]
        if not peaks or min(peaks) >= before:
            continue
        pick = next((i for i, p in enumerate(peaks) if p <= budget_gb), len(peaks) - 1)
        words, changes, current = candidates[pick]
        path.append(Saver(words, changes, before - peaks[pick], peaks[pick]))
        before = peaks[pick]
        if before <= budget_gb:
            break
    options = [tuple(path)] if path else []
    for kind in SAVERS:
        for words, changes, cand in _candidates(kind, sizes, s):
            after = peak(cand)
            if after <= budget_gb:
                if (words,) != tuple(sv.words for sv in path):
                    options.append((Saver(words, changes, start - after, after),))
                break
    return options


# ------------------------------------------------------------------------------------------------ in words

def _option_words(option: tuple[Saver, ...]) -> str:
    return " and ".join(f"{sv.words} (-{sv.saves_gb:.1f} GB)" for sv in option)


def describe_fit(fit: Estimate, options: list, gpu_name: str | None, free_gb: float | None,
                 ram_total_gb: float | None, ram_free_gb: float | None) -> list[str]:
    """The estimate in lines for the dry run (the GUI shows the same data its own way)."""
    low, high = fit.range_gb
    lines = [(f"needs ~{fit.vram_gb:.1f} GB of VRAM at its peak ({fit.phase}; {low:.1f}-{high:.1f} GB with the "
              f"estimate's ±{fit.margin:.0%}) and ~{fit.ram_gb:.1f} GB of system RAM ({fit.ram_phase})")]
    lines.append("  model: " + ", ".join(f"{label} {_count(params)}" + (f" {dtype}" if dtype else "")
                                         for label, params, dtype in fit.model))
    lines += [f"  {_amount(p.vram_gb)}  {p.what}" for p in fit.parts if p.vram_gb]
    if fit.phase != "training":
        lines.append(f"  (training itself: ~{fit.phases['training']:.1f} GB)")
    lines += [f"  {_amount(p.ram_gb)}  RAM: {p.what}" for p in fit.parts if p.ram_gb]
    if fit.tokens:
        lines.append(f"  {fit.tokens} tokens per image (image + text)")
    lines += [f"  note: {note}" for note in fit.notes]
    gpu = (gpu_name or "GPU").removeprefix("NVIDIA ").removeprefix("GeForce ")
    if free_gb is None and gpu_name:
        lines.append(f"your {gpu}: its free memory could not be read, so the estimate is not compared with it")
    elif free_gb is None:
        lines.append("no NVIDIA GPU found (nvidia-smi did not answer): the estimate cannot be compared with a card")
    elif fit.vram_gb <= free_gb:
        tight = "; tight: within the estimate's margin" if high > free_gb else ""
        lines.append(f"fits: your {gpu} has {free_gb:.1f} GB free ({free_gb - fit.vram_gb:.1f} GB to spare{tight})")
    else:
        training, caching = fit.phases["training"], max(fit.phases["caching text"], fit.phases["caching latents"])
        if training > free_gb:
            lines.append(f"needs ~{training:.1f} GB, your {gpu} has {free_gb:.1f} GB free" +
                         _savers_words(options, free_gb))
            lines += [f"  {' + '.join(sv.words for sv in option)}: "
                      f"{' '.join(f'--set {k}={v}' for sv in option for k, v in sv.changes.items())}"
                      f"  (then ~{option[-1].vram_gb:.1f} GB)" for option in options if option[-1].vram_gb <= free_gb]
        if caching > free_gb:
            lines.append(f"{'  also: ' if training > free_gb else ''}while the captions and images are encoded "
                         f"(before training) the card holds ~{caching:.1f} GB, your {gpu} has {free_gb:.1f} GB free: "
                         f"close programs that use the GPU")
        lines.append("  (on Windows a run that does not fit spills into shared GPU memory and gets 10x slower "
                     "instead of stopping)")
    if ram_total_gb is not None:
        free = f", {ram_free_gb:.1f} GB free" if ram_free_gb is not None else ""
        if fit.ram_gb <= (ram_free_gb if ram_free_gb is not None else ram_total_gb):
            verdict = "fits"
        elif fit.ram_gb <= ram_total_gb:
            verdict = "more than is free now: close programs before the run, or the system pages to disk (slow)"
        else:
            then = (" (the peak is only while loading)" if fit.ram_phase == "loading" else
                    ", or keep fewer blocks in RAM (model.block_swap)")
            verdict = ("more than installed: the system pages to disk (slow) or stops with 'paging file too small'; "
                       f"raise the page file{then}")
        lines.append(f"RAM: needs ~{fit.ram_gb:.1f} GB, this PC has {ram_total_gb:.1f} GB{free}: {verdict}")
    return lines


def _count(params: int) -> str:
    """11.90 B, 123.1 M, 78.5 K parameters."""
    for size, unit, digits in ((1e9, "B", 2), (1e6, "M", 1), (1e3, "K", 1)):
        if params >= size:
            return f"{params / size:.{digits}f} {unit}"
    return str(params)


def _amount(gb: float) -> str:
    """'  9.9 GB' or ' 12 MB' (tiny models and small parts), aligned."""
    return f"{gb:5.1f} GB" if gb >= 0.1 else f"{gb * 1024:5.0f} MB"


def _savers_words(options: list, free_gb: float) -> str:
    """': turn on A (-x GB) or B (-y GB)' for the options that fit, or why nothing does."""
    fitting = [o for o in options if o[-1].vram_gb <= free_gb]
    if fitting:
        return ": turn on " + " or ".join(_option_words(o) for o in fitting)
    if options:
        return (f": even with {_option_words(options[0])} it needs ~{options[0][-1].vram_gb:.1f} GB; this card is "
                f"too small for these settings")
    return "; no memory saver is left to turn on: this card is too small for these settings"
