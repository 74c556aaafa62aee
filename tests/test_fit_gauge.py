"""The "Will it fit?" gauge (ui/fit_gauge.py): the FLUX VRAM tiers fit their cards, the gauge follows the memory
settings and says how to fit, Apply changes only the memory keys, and the section's events are wired."""
from __future__ import annotations

import re
import time

import pytest

gr = pytest.importorskip("gradio")

from engine.config.load import load_preset, preset_from_dict
from ui import fit_gauge
from ui.fields import Form

FLUX_HUB = "black-forest-labs/FLUX.1-dev"   # no files: fit takes the real model's sizes
# a FLUX run with no memory saver on: bf16 base, AdamW, no checkpointing, batch 2 at 1024 px
HEAVY_FLUX = {"model": {"family": "flux", "path": FLUX_HUB, "quantize_base": "none"},
              "dataset": {"resolution_px": 1024, "min_bucket_px": 512, "max_bucket_px": 1536},
              "training": {"batch_size": 2, "gradient_checkpointing": False},
              "optimizers": {"unet": {"type": "adamw", "lr": 1e-4}}}


@pytest.fixture(scope="module")
def form():
    with gr.Blocks():
        form = Form()
        for section in ("model", "dataset", "network", "training", "optimizers", "schedules", "sampling", "output",
                        "validation", "vae", "rl"):
            form.section(section)
        assert not form.unbound()
    return form


def values_of(form, preset) -> dict:
    return dict(form.updates_from_preset(preset))


def peak_gb(page: str) -> float:
    return float(re.search(r"≈ ([\d.]+) GB", page)[1])


def test_the_tiers_are_read_from_the_preset_files():
    assert list(fit_gauge.TIERS) == ["24 GB", "16 GB", "12 GB"]
    for name, tier in fit_gauge.TIERS.items():
        preset = load_preset(tier.file)
        assert tier.budget_gb == float(name.split()[0])
        assert tier.values["model.block_swap"] == preset.model.block_swap
    assert fit_gauge.tier_for_vram(15.99) == "16 GB" and fit_gauge.tier_for_vram(139.8) == "24 GB"
    assert fit_gauge.tier_for_vram(8.0) == "12 GB" and fit_gauge.tier_for_vram(None) is None


@pytest.mark.parametrize("tier_name", ["24 GB", "16 GB", "12 GB"])
def test_each_tier_applied_to_a_heavy_flux_run_fits_its_card(form, tier_name):
    values = values_of(form, preset_from_dict(HEAVY_FLUX))
    budget = fit_gauge.TIERS[tier_name].budget_gb
    assert "does not fit" in fit_gauge.gauge_html(form.to_preset(values), budget)
    values.update(fit_gauge.tier_updates(form, tier_name, values))
    preset = form.to_preset(values)
    page = fit_gauge.gauge_html(preset, budget)
    assert "easel-fit-red" not in page and "fits" in page and f"of {budget:g} GB" in page
    assert peak_gb(page) <= budget
    assert preset.model.quantize_base == "fp8" and preset.optimizers["unet"].type == "adamw8bit"  # the 8-bit twin


def test_bf16_flux_at_1024_on_12_gb_does_not_fit_and_names_a_saver(form):
    preset = preset_from_dict({**HEAVY_FLUX, "training": {"batch_size": 1}})
    page = fit_gauge.gauge_html(preset, 12.0)
    assert "easel-fit-red" in page and "does not fit" in page
    advice = page.split('class="easel-fit-advice"')[1]
    assert "fp8 base" in advice or "block swap" in advice
    assert "model.quantize_base: fp8" in advice or "model.block_swap" in advice


def test_the_savers_fit_advice_lacks_are_named_too():
    page = fit_gauge.gauge_html(preset_from_dict(HEAVY_FLUX), 24.0)   # no checkpointing, batch 2
    assert "Gradient checkpointing on" in page and "Batch size 1" in page


def test_more_pixels_or_a_larger_batch_raise_the_peak():
    base = preset_from_dict({"model": {"family": "flux", "path": FLUX_HUB, "quantize_base": "fp8"},
                             "dataset": {"resolution_px": 512}})
    larger = preset_from_dict({"model": {"family": "flux", "path": FLUX_HUB, "quantize_base": "fp8"},
                               "dataset": {"resolution_px": 1024}})
    batch = preset_from_dict({"model": {"family": "flux", "path": FLUX_HUB, "quantize_base": "fp8"},
                              "dataset": {"resolution_px": 512}, "training": {"batch_size": 4}})
    low = peak_gb(fit_gauge.gauge_html(base, 24.0))
    assert peak_gb(fit_gauge.gauge_html(larger, 24.0)) > low
    assert peak_gb(fit_gauge.gauge_html(batch, 24.0)) > low


def test_a_tier_changes_only_the_memory_keys(form):
    preset = load_preset(fit_gauge.PRESETS_DIR / "flux-identity-fast.yaml")   # 512 px, rank 32, AdamW
    preset = preset_from_dict({**_data(form, preset), "model": {"family": "flux", "path": "D:/ComfyUI/flux1.sft",
                                                                "t5_path": "D:/ComfyUI/t5xxl_fp16.safetensors"}})
    values = values_of(form, preset)
    updates = fit_gauge.tier_updates(form, "12 GB", values)
    allowed = {form.widgets[k] for k in (*fit_gauge.TIER_KEYS, *fit_gauge.OPTIMIZER_KEYS)}
    assert set(updates) <= allowed
    values.update(updates)
    after = form.to_preset(values)
    assert after.model.path == "D:/ComfyUI/flux1.sft" and after.model.t5_path == "D:/ComfyUI/t5xxl_fp16.safetensors"
    assert after.network.rank == preset.network.rank and after.sampling.prompts == preset.sampling.prompts
    assert after.model.block_swap == 34 and after.model.quantize_base == "fp8"
    assert after.dataset.resolution_px == 512   # lower than the tier's 768: it stays, with its buckets
    assert after.dataset.max_bucket_px == preset.dataset.max_bucket_px
    assert after.optimizers["unet"].lr == preset.optimizers["unet"].lr   # adamw -> adamw8bit keeps its lr


def test_another_optimizer_comes_with_the_tiers_learning_rate(form):
    preset = preset_from_dict({**HEAVY_FLUX, "optimizers": {"unet": {"type": "prodigy", "lr": 1.0}}})
    values = values_of(form, preset)
    values.update(fit_gauge.tier_updates(form, "24 GB", values))
    after = form.to_preset(values)
    tier = fit_gauge.TIERS["24 GB"].values
    assert after.optimizers["unet"].type == "adamw8bit" and after.optimizers["unet"].lr == tier["optimizers.unet.lr"]


def _data(form, preset) -> dict:
    return form.to_data(values_of(form, preset))


def test_sd_families_get_an_estimate_and_dit_a_message():
    for name in ("sd15-lora", "sdxl-lora", "sd2-v-finetune"):
        page = fit_gauge.gauge_html(load_preset(fit_gauge.PRESETS_DIR / f"{name}.yaml"), 8.0, "NVIDIA GeForce RTX 3070")
        assert "of 8 GB" in page and "(GeForce RTX 3070)" in page and "unet weights" in page, name
    no_card = fit_gauge.gauge_html(load_preset(fit_gauge.PRESETS_DIR / "sd15-lora.yaml"), None)
    assert "easel-fit-unknown" in no_card and "no NVIDIA GPU found" in no_card
    assert "No memory estimate" in fit_gauge.gauge_html(load_preset(fit_gauge.PRESETS_DIR / "dit-ddpm.yaml"), 12.0)


def test_the_gauge_is_fast_and_survives_odd_paths():
    odd = preset_from_dict({**HEAVY_FLUX, "model": {"family": "flux", "path": "~nobody-here/flux1-dev.safetensors"}})
    start = time.perf_counter()
    page = fit_gauge.gauge_html(odd, 12.0)
    assert time.perf_counter() - start < 0.5
    assert "does not fit" in page


def test_the_section_redraws_and_applies_inside_the_app():
    with gr.Blocks() as blocks:
        form = Form()
        for section in ("model", "dataset", "network", "training", "optimizers", "schedules", "sampling", "output",
                        "validation", "vae", "rl"):
            form.section(section)
        parts = fit_gauge.build(form)
        fit_gauge.wire(form, parts)
    assert set(fit_gauge.GAUGE_KEYS) <= set(form.widgets)
    redraw = next(f for f in blocks.fns.values() if f.api_name == "fit_gauge")
    assert parts["tier"] in redraw.inputs and parts["gauge"] in redraw.outputs
    triggers = {block_id for block_id, _ in redraw.targets}
    assert triggers >= {form.widgets["dataset.resolution_px"]._id, parts["tier"]._id}
    values = {**values_of(form, preset_from_dict(HEAVY_FLUX)), parts["tier"]: "16 GB"}
    assert "does not fit" in redraw.fn(dict(values)) and "of 16 GB" in redraw.fn(dict(values))
    apply = next(f for f in blocks.fns.values() if f.api_name == "fit_apply")
    values.update(apply.fn(dict(values)))
    assert "does not fit" not in parts["redraw"](dict(values))
    values[form.widgets["dataset.resolution_px"]] = 20   # invalid: the gauge waits for the fix
    assert "Fix the fields marked in red first" in parts["redraw"](values)


# torch and the libraries that pull it in are unimportable: building, wiring and drawing must not need them
WITHOUT_TORCH = """
import sys
for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes"):
    sys.modules[name] = None
sys.path.insert(0, {root!r})
import gradio as gr
from engine.config.load import load_preset
from ui import fit_gauge
from ui.fields import Form
with gr.Blocks():
    form = Form()
    for section in ("model", "dataset", "network", "training", "optimizers"):
        form.section(section)
    parts = fit_gauge.build(form)
    fit_gauge.wire(form, parts)
print(fit_gauge.detected_vram_gb())
assert "GB of 12 GB" in fit_gauge.gauge_html(load_preset(fit_gauge.TIERS["12 GB"].file), 12.0)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers") and sys.modules[m])
print("HEAVY", heavy)
"""


def test_the_section_needs_no_torch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = WITHOUT_TORCH.format(root=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True, text=True,
                         encoding="utf-8", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout
