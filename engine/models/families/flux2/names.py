"""FLUX.2 klein's files: which kind a set of tensor names is (so a mix-up names the preset key that should hold the
file), and the AE's original layout, which diffusers' single-file loader does not read for AutoencoderKLFlux2.
The transformer's original (BFL) names are read by diffusers' convert_flux2_transformer_checkpoint_to_diffusers."""
from __future__ import annotations

from engine.models.families.flux2.bfl_names import PREFIXES, strip_prefix  # noqa: F401  (loading.py's too)
from engine.models.families.zimage.names import KINDS as ZIMAGE_KINDS, kind_of_keys as zimage_kind_of_keys

KINDS = {
    **ZIMAGE_KINDS,
    "flux2_transformer": "a FLUX.2 klein transformer (flux-2-klein-base-4b / -9b, ComfyUI's diffusion_models/)",
    "flux2_transformer_diffusers": "a FLUX.2 klein transformer in diffusers layout",
    "flux2_ae": "a FLUX.2 autoencoder (flux2-vae: 32 latent channels)",
}
_MODULATION = "double_stream_modulation_img."   # FLUX.2's shared modulation: in both layouts, FLUX.1 has none


def kind_of_keys(keys) -> str | None:
    keys = [strip_prefix(k) for k in keys]
    if any(k.startswith(_MODULATION) for k in keys):
        return "flux2_transformer_diffusers" if any(k.startswith("transformer_blocks.") for k in keys) \
            else "flux2_transformer"
    if any(k.startswith("bn.running_mean") for k in keys) and any(k.startswith("decoder.") for k in keys):
        return "flux2_ae"   # the FLUX.2 AE normalizes its patches with batch-norm statistics
    return zimage_kind_of_keys(keys)


def file_kind(path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return kind_of_keys(f.keys())


def ae_to_diffusers(state: dict, config: dict) -> dict:
    """The FLUX.2 AE from its original layout (encoder.down.0.block.0 ..., as ComfyUI's file holds it) into
    AutoencoderKLFlux2's names: diffusers' LDM VAE converter for the encoder and decoder, the quant convs and the
    batch-norm statistics as they are. A file in diffusers' layout already passes through."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):
        return dict(state)
    out = convert_ldm_vae_checkpoint(state, config)
    out.update({k: v for k, v in state.items() if k.startswith("bn.")})
    return out
