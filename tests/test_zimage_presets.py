"""The Z-Image VRAM tier presets (presets/zimage-lora-<N>gb.yaml): they train the base with the settings their
sources give (musubi-tuner docs/zimage.md, OneTrainer's presets, ai-toolkit#550, OneTrainer#1269, the model card),
each names its sources, and each passes the engine's dry run."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.load import load_preset

PRESETS = Path(__file__).resolve().parents[1] / "presets"
TIERS = {8: PRESETS / "zimage-lora-8gb.yaml", 12: PRESETS / "zimage-lora-12gb.yaml",
         16: PRESETS / "zimage-lora-16gb.yaml", 24: PRESETS / "zimage-lora-24gb.yaml"}
# card GB -> (quantize_base, block_swap, resolution_px, optimizer): the memory savers each tier's sources chose
SAVERS = {8: ("fp8", 18, 512, "adamw8bit"), 12: ("fp8", 0, 768, "adamw8bit"), 16: ("fp8", 0, 1024, "adamw8bit"),
          24: ("none", 0, 1024, "adamw")}


@pytest.mark.parametrize("gb", sorted(TIERS))
def test_each_tier_trains_the_base_as_musubi_recommends(gb):
    p = load_preset(TIERS[gb])
    assert (p.model.family, p.model.path, p.model.preview_path) == ("zimage", "Tongyi-MAI/Z-Image", "")
    t = p.training
    assert (t.objective, t.timestep_sampling, t.discrete_flow_shift, t.min_snr_gamma) == ("flow", "shift", 2.0, 0.0)
    assert t.precision == "bf16" and t.gradient_checkpointing and t.cache_latents and t.cache_text_embeddings
    assert p.network.type == "lora" and 16 <= p.network.rank <= 32 and p.network.alpha == p.network.rank
    assert not p.network.train_text_encoder                    # Z-Image's Qwen3 encoder never trains here
    assert p.optimizers["unet"].lr == 1e-4
    assert (p.model.quantize_base, p.model.block_swap, p.dataset.resolution_px, p.optimizers["unet"].type) == \
        SAVERS[gb]


def test_block_swap_stays_within_what_is_worth_swapping():
    from engine.models.families import capabilities

    most = capabilities("zimage").block_swap_max
    assert all(load_preset(path).model.block_swap <= most for path in TIERS.values())


@pytest.mark.parametrize("gb", sorted(TIERS))
def test_each_tier_samples_the_base_with_guidance_and_the_trigger(gb):
    p = load_preset(TIERS[gb])
    s = p.sampling
    assert 28 <= s.steps <= 50 and 3.0 <= s.guidance_scale <= 5.0   # the model card's ranges for the base
    assert len(s.prompts) >= 2 and all(p.dataset.trigger in prompt for prompt in s.prompts)
    assert s.every_n_steps > 0


@pytest.mark.parametrize("gb", sorted(TIERS))
def test_each_tier_names_its_sources(gb):
    text = TIERS[gb].read_text(encoding="utf-8")
    assert "Sources:" in text and "musubi-tuner docs/zimage.md" in text
    assert "Turbo" in text and "model.preview_path" in text   # why the base, and how to preview on Turbo
    assert all(len(line) <= 120 for line in text.splitlines())


@pytest.mark.parametrize("gb", sorted(TIERS))
def test_each_tier_passes_the_dry_run(gb, tmp_path, monkeypatch, capsys):
    from engine.cli import train
    from tests.dataset_factory import make_clean_dataset

    make_clean_dataset(tmp_path / "data", n=4)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert train([str(TIERS[gb]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# will it fit" in out and "Z-Image" in out
