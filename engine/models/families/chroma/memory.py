"""Chroma's memory model for "will it fit" (engine/models/fit/): its real sizes, how its files name the blocks, and
its activations. Torch-free, like fit (the GUI's gauge imports it).

Without local files (a Hub id, a missing path) the sizes of the real model stand in, counted from diffusers'
ChromaTransformer2DModel config of Chroma1-HD (its defaults: 19 double and 38 single blocks of width 3072, no
guidance embedder, a 5-layer approximator of width 5120) on the meta device: transformer 8,899,983,424 parameters,
278,285,312 of them the approximator (chroma_tensors lays them out in full; tests/test_chroma_family.py checks it
against diffusers). T5-XXL's encoder 4,762,310,656 and the AE 83,819,683 are FLUX.1's own files.

Activations: FLUX's units per token (flux/memory.py, measured there), because a Chroma block is a FLUX block with
the same linears, attention and MLPs; what Chroma removed (the modulation linears, one vector per sample) holds no
per-token activations. The text tokens are counted at T5's full 512: an upper bound, since predict cuts the text to
the batch's longest caption (at 1024 px, 512 text tokens are 11 % of the 4,608 tokens of a step; short captions
peak that much lower).

Compared with SimpleTuner's published Chroma figures (documentation/quickstart/CHROMA.md, via
notes/peers-2026-12.md: about 28 GB in bf16, 16 GB int8, 11 GB int4, 8 GB NF4; rank, resolution and optimizer not
said). Here at 1024 px, rank 16, AdamW8bit, checkpointing, cached text, the training phase: bf16 22.5 GB, fp8 and
int8 13.7 GB, NF4 9.8 GB (int8 / NF4 peak earlier, at 19.5 / 15.6 GB, while T5 encodes the captions beside the
quantized transformer that bitsandbytes put on the card). Below SimpleTuner's, as its unstated settings may explain;
not yet measured on a real Chroma.
"""
from __future__ import annotations

import re

from engine.models.families.flux.bfl_names import diffusers_modules_of
from engine.models.families.flux.memory import FLUX_TARGETS, flux_activations, flux_tensors
from engine.models.fit.family import BlockLayout, FamilyMemory
from engine.models.fit.headers import Tensors

# FLUX.1 tensors that Chroma does not have: the modulation linears and the embedders distilled_guidance_layer replaced
_FLUX_ONLY = re.compile(r"^(time_text_embed\.|norm_out\.linear\.|transformer_blocks\.\d+\.norm1(_context)?\.linear\.|"
                        r"single_transformer_blocks\.\d+\.norm\.linear\.)")

# the blocks in diffusers' names and in BFL's (the ComfyUI file: flux/bfl_names.py splits its fused linears);
# unlike FLUX.1-dev, no guidance embedding (distilled_guidance_layer is not one: it takes the timestep alone)
LAYOUT = BlockLayout(
    block=re.compile(r"^(?:model\.diffusion_model\.)?(transformer_blocks|double_blocks|single_transformer_blocks|"
                     r"single_blocks)\.(\d+)\."),
    double_kinds=("transformer_blocks", "double_blocks"), renamed_kinds=("double_blocks", "single_blocks"),
    rename=diffusers_modules_of, width_keys=("img_in.weight", "x_embedder.weight"))


def chroma_tensors(double: int = 19, single: int = 38, hidden: int = 3072, approximator_width: int = 5120,
                   approximator_layers: int = 5, approximator_in: int = 64, dtype: str = "BF16") -> Tensors:
    """The tensors (names, shapes) of diffusers' ChromaTransformer2DModel for a layout; the defaults are Chroma1's."""
    t = {k: v for k, v in flux_tensors(double, single, hidden, guidance=False, dtype=dtype).items()
         if not _FLUX_ONLY.match(k)}

    def linear(name, fan_in, fan_out):
        t[f"{name}.weight"], t[f"{name}.bias"] = ((fan_out, fan_in), dtype), ((fan_out,), dtype)

    a = "distilled_guidance_layer"
    linear(f"{a}.in_proj", approximator_in, approximator_width)
    for i in range(approximator_layers):
        linear(f"{a}.layers.{i}.linear_1", approximator_width, approximator_width)
        linear(f"{a}.layers.{i}.linear_2", approximator_width, approximator_width)
        t[f"{a}.norms.{i}.weight"] = ((approximator_width,), dtype)
    linear(f"{a}.out_proj", approximator_width, hidden)
    return t


MEMORY = {"chroma": FamilyMemory(
    "Chroma1-HD", "transformer", ("text_encoder",), ("T5-XXL",), (),
    FLUX_TARGETS,  # every Linear of Chroma's blocks (record.py's BLOCK_LINEARS): FLUX's default set
    flux_activations, (512, 512), 4096, ("text_encoder",),
    {"text_encoder": 4_762_310_656, "vae": 83_819_683},
    known_denoiser=lambda model_path: chroma_tensors(), te_lora_targets=(),
    lora_scope=r"^(transformer_blocks|single_transformer_blocks)\.\d+\.",
    single_file_prefixes={"model.diffusion_model.": "transformer", "": "transformer"},
    layout=LAYOUT, separate_keys={"text_encoder": "t5_path", "vae": "vae_path"})}
