"""The FLUX.2 klein VRAM tier presets (presets/flux2-klein<4b|9b>-lora-<N>gb.yaml): they train the klein base with
the settings their sources give (musubi-tuner docs/flux_2.md, SimpleTuner's and OneTrainer's klein figures, the
pipeline's own sampling), each names its sources, each passes the engine's dry run, and each fits its card by the
estimate, the caching of the captions included."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.load import load_preset

PRESETS = Path(__file__).resolve().parents[1] / "presets"
TIERS = {("4b", 12): PRESETS / "flux2-klein4b-lora-12gb.yaml", ("4b", 16): PRESETS / "flux2-klein4b-lora-16gb.yaml",
         ("9b", 16): PRESETS / "flux2-klein9b-lora-16gb.yaml", ("9b", 24): PRESETS / "flux2-klein9b-lora-24gb.yaml"}
HUB = {"4b": "black-forest-labs/FLUX.2-klein-base-4B", "9b": "black-forest-labs/FLUX.2-klein-base-9B"}
# (variant, card GB) -> (quantize_base, block_swap, text_encoder_fp8, resolution_px, optimizer): the savers each
# tier's sources chose
SAVERS = {("4b", 12): ("fp8", 0, True, 1024, "adamw8bit"), ("4b", 16): ("none", 0, False, 1024, "adamw8bit"),
          ("9b", 16): ("fp8", 0, True, 1024, "adamw8bit"), ("9b", 24): ("none", 4, False, 1024, "adamw8bit")}
IDS = [f"{v}-{gb}gb" for v, gb in TIERS]


@pytest.mark.parametrize("tier", list(TIERS), ids=IDS)
def test_each_tier_trains_the_klein_base_as_musubi_recommends(tier):
    p = load_preset(TIERS[tier])
    assert (p.model.family, p.model.path, p.model.preview_path) == ("flux2", HUB[tier[0]], "")
    t = p.training
    assert (t.objective, t.timestep_sampling, t.min_snr_gamma) == ("flow", "flux_shift", 0.0)
    assert t.precision == "bf16" and t.gradient_checkpointing and t.cache_latents and t.cache_text_embeddings
    assert p.network.type == "lora" and p.network.rank == p.network.alpha == 32 and not p.network.targets
    assert not p.network.train_text_encoder                    # klein's Qwen3 never trains here
    assert p.optimizers["unet"].lr == 1e-4
    m = p.model
    assert (m.quantize_base, m.block_swap, m.text_encoder_fp8, p.dataset.resolution_px, p.optimizers["unet"].type) \
        == SAVERS[tier]


def test_block_swap_stays_within_what_is_worth_swapping():
    from engine.models.families import capabilities

    most = capabilities("flux2").block_swap_max
    assert all(load_preset(path).model.block_swap <= most for path in TIERS.values())


@pytest.mark.parametrize("tier", list(TIERS), ids=IDS)
def test_each_tier_samples_the_base_with_guidance_and_the_trigger(tier):
    p = load_preset(TIERS[tier])
    s = p.sampling
    assert (s.steps, s.guidance_scale) == (50, 4.0)          # Flux2KleinPipeline's defaults for the base
    assert len(s.prompts) >= 2 and all(p.dataset.trigger in prompt for prompt in s.prompts)
    assert s.every_n_steps > 0 and p.output.formats == ["kohya"]


@pytest.mark.parametrize("tier", list(TIERS), ids=IDS)
def test_each_tier_names_its_sources_and_the_distilled_klein(tier):
    text = TIERS[tier].read_text(encoding="utf-8")
    assert "Sources:" in text and "musubi-tuner docs/flux_2.md" in text and "notes/peers-2026-12.md" in text
    assert "model.preview_path" in text and HUB[tier[0]].replace("-base", "") in text   # the distilled klein
    assert "4 steps, guidance 1" in text
    assert all(len(line) <= 120 for line in text.splitlines())


@pytest.mark.parametrize("tier", list(TIERS), ids=IDS)
def test_each_tier_fits_its_card_while_training_and_while_caching(tier):
    """The estimate for the real klein (model.path is a Hub id: its known sizes) on the card the tier is named for,
    training and the caching passes before it, with a GB left for the desktop (as FLUX's 16 GB tier leaves)."""
    from engine.models.fit import estimate, fit_settings, model_sizes

    p = load_preset(TIERS[tier])
    fit = estimate(model_sizes(p.model), fit_settings(p))
    assert fit.vram_gb <= tier[1] - 1, fit.phases
    assert fit.ram_gb < {"4b": 32, "9b": 64}[tier[0]], fit.ram_phases   # SimpleTuner's RAM for each klein


@pytest.mark.parametrize("tier", list(TIERS), ids=IDS)
def test_each_tier_passes_the_dry_run(tier, tmp_path, monkeypatch, capsys):
    from engine.cli import train
    from tests.dataset_factory import make_clean_dataset

    make_clean_dataset(tmp_path / "data", n=4)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert train([str(TIERS[tier]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# will it fit" in out and "FLUX.2 klein" in out
