"""A trained VAE as the files users load (training.mode vae), each checked by loading it back.

    save_vae(folder, stem, vae) -> [(path, format)]
        folder/<stem>-vae/            a diffusers AutoencoderKL folder (diffusers: AutoencoderKL.from_pretrained, or
                                      pipe.vae = ...)
        folder/<stem>.safetensors     the single-file VAE in the original layout (A1111/Forge models/VAE, ComfyUI
                                      models/vae, "Load VAE")
Both are written in fp32: SDXL's VAE overflows in fp16 (the fp16-fix VAEs exist for that reason), and a VAE is
small. The self-check reloads the folder (the same weights) and the single file through diffusers' own single-file
loader with the folder as its config (the same decode of a fixed latent): a file that does not reload is an error.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.atomic import atomic_save_file
from engine.failures import UserError
from engine.models.families.sd.ldm_convert import vae_state_to_ldm

FOLDER_SUFFIX = "-vae"


def save_vae(folder: Path, stem: str, vae) -> list[tuple[Path, str]]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in vae.state_dict().items()}
    out_dir = folder / f"{stem}{FOLDER_SUFFIX}"
    _save_folder(vae, state, out_dir)
    single = folder / f"{stem}.safetensors"
    atomic_save_file(vae_state_to_ldm(state, len(vae.config.up_block_types)), single,
                     metadata={"format": "pt", "modelspec.architecture": "vae", "modelspec.title": stem})
    check_reload(vae, state, out_dir, single)
    return [(out_dir, "diffusers-vae"), (single, "single-file-vae")]


def _save_folder(vae, state: dict, out_dir: Path) -> None:
    """save_pretrained of an fp32 copy, into a temporary folder first: a crash mid-save keeps the last good one."""
    import shutil

    from diffusers import AutoencoderKL

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy = AutoencoderKL.from_config(vae.config)
    copy.load_state_dict(state)
    copy.save_pretrained(tmp, safe_serialization=True)
    old = out_dir.with_name(out_dir.name + ".old.tmp")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def check_reload(vae, state: dict, out_dir: Path, single: Path) -> None:
    from diffusers import AutoencoderKL

    folder_vae = AutoencoderKL.from_pretrained(out_dir, local_files_only=True)
    changed = [k for k, v in folder_vae.state_dict().items() if not torch.equal(v, state[k])]
    if changed:
        raise UserError(f"{out_dir.name}: the saved VAE folder does not reload as trained ({len(changed)} tensors "
                        f"differ, e.g. {changed[0]}).", "Report this as a bug; the previous checkpoint is intact.")
    file_vae = AutoencoderKL.from_single_file(str(single), config=str(out_dir), local_files_only=True)
    channels = vae.config.latent_channels
    z = torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = folder_vae.decode(z).sample
    got = file_vae.decode(z).sample
    if not torch.allclose(got, expected, atol=1e-4):
        raise UserError(f"{single.name}: the single-file VAE does not decode as the trained one (max difference "
                        f"{(got - expected).abs().max():.3g}).", "Report this as a bug; the diffusers folder "
                        f"{out_dir.name} beside it holds the trained VAE.")
