"""Every shipped preset validates and round-trips; the FLUX identity profiles hold the guide's exact values."""
from pathlib import Path

import pytest

from engine.config.load import load_preset, preset_from_dict
from engine.config.save import preset_to_dict, save_preset

PRESETS = sorted((Path(__file__).resolve().parents[1] / "presets").glob("*.yaml"))


def test_the_issue_presets_are_shipped():
    names = {p.name for p in PRESETS}
    assert {"flux-identity-fast.yaml", "flux-identity-final.yaml", "sd15-lora.yaml", "sdxl-lora.yaml",
            "sd2-v-finetune.yaml", "demo.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_validates_and_round_trips(path, tmp_path):
    preset = load_preset(path)
    assert preset_from_dict(preset_to_dict(preset)) == preset
    assert load_preset(save_preset(preset, tmp_path / path.name)) == preset


def test_flux_fast_profile_matches_the_guide():
    p = load_preset(PRESETS[0].with_name("flux-identity-fast.yaml"))
    assert p.dataset.resolution_px == 512 and p.training.max_steps == 1500
    assert (p.network.rank, p.network.alpha) == (32, 32) and p.optimizers["unet"].lr == 1e-4
    assert p.schedules["unet"].type == "constant_with_warmup" and p.schedules["unet"].warmup_steps == 100
    assert p.training.noise_offset == 0.05 and (p.dataset.min_bucket_px, p.dataset.max_bucket_px) == (256, 768)
    assert not p.network.train_text_encoder


def test_flux_final_profile_matches_the_guide():
    p = load_preset(PRESETS[0].with_name("flux-identity-final.yaml"))
    assert p.dataset.resolution_px == 768 and p.training.max_steps == 2500
    assert (p.network.rank, p.network.alpha, p.network.dropout) == (64, 64, 0.1)
    assert p.optimizers["unet"].lr == 1e-4
    assert p.schedules["unet"].type == "cosine" and p.schedules["unet"].warmup_steps == 500
    assert p.training.noise_offset == 0.1 and p.training.min_snr_gamma == 5.0
    assert (p.dataset.min_bucket_px, p.dataset.max_bucket_px) == (384, 1024)
    assert not p.network.train_text_encoder and p.network.te_lr_ratio == 0.4


def test_sd_family_presets_write_the_format_their_users_load():
    """kohya by default: for SD1.5/SD2/SDXL the diffusers format loads in diffusers only, not in A1111/ComfyUI."""
    from engine.config.schema import OutputConfig

    assert OutputConfig().formats == ["kohya"]
    for path in PRESETS:
        preset = load_preset(path)
        if preset.model.family != "flux" and preset.network.type == "lora":
            assert preset.output.formats == ["kohya"], path.name
