"""The "Will it fit?" gauge (ui/fit_gauge.py) and its VRAM tiers (ui/fit_tiers.py): each family's tiers are its
presets/<family>[-<variant>]-lora-<N>gb.yaml and fit their cards, the picker offers the form's family's tiers (a
family with model sizes: each size's, and a card gets the tier of the form's model size), the gauge follows the
memory settings and says how to fit, Apply changes only the memory keys, and the section's events are wired."""
from __future__ import annotations

import re
import time

import pytest

gr = pytest.importorskip("gradio")

from engine.config.load import load_preset, preset_from_dict
from engine.models.families import memory_model
from ui import fit_gauge, fit_tiers
from ui.fields import Form

FLUX_HUB = "black-forest-labs/FLUX.1-dev"   # no files: fit takes the real model's sizes
FLUX_TIERS = fit_tiers.tiers_for("flux")
FLUX2_TIERS = fit_tiers.tiers_for("flux2")
KLEIN_4B, KLEIN_9B = "black-forest-labs/FLUX.2-klein-base-4B", "black-forest-labs/FLUX.2-klein-base-9B"
ZIMAGE_TIERS = fit_tiers.tiers_for("zimage")
# a Z-Image run with no memory saver on: bf16 base, AdamW, no checkpointing, batch 2 at 1024 px
HEAVY_ZIMAGE = {"model": {"family": "zimage", "path": "Tongyi-MAI/Z-Image", "quantize_base": "none"},
                "dataset": {"resolution_px": 1024, "min_bucket_px": 512, "max_bucket_px": 1536},
                "training": {"batch_size": 2, "gradient_checkpointing": False},
                "optimizers": {"unet": {"type": "adamw", "lr": 1e-4}}}
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


# a FLUX.2 klein run with no memory saver on, for the model size in `path`
def heavy_flux2(path: str) -> dict:
    return {"model": {"family": "flux2", "path": path, "quantize_base": "none"},
            "dataset": {"resolution_px": 1024, "min_bucket_px": 512, "max_bucket_px": 1536},
            "training": {"batch_size": 2, "gradient_checkpointing": False},
            "optimizers": {"unet": {"type": "adamw", "lr": 1e-4}}}


# The constants of a family's memory model that are 0 until it has been measured (a placeholder being written)
MEASURED = {"flux2": ("DOUBLE_UNITS", "SINGLE_UNITS", "CHECKPOINT_UNITS", "ENCODER_STATES")}


def skip_without_memory_model(family: str) -> None:
    """Skip an estimate's test where the family has no memory model yet, or one whose measured constants are still
    0 (engine/models/families/<family>/memory.py)."""
    where = f"engine/models/families/{family}/memory.py"
    if memory_model(family) is None:
        pytest.skip(f"no memory model for {family} yet ({where})")
    if family in MEASURED:
        import importlib

        module = importlib.import_module(f"engine.models.families.{family}.memory")
        unmeasured = [name for name in MEASURED[family] if getattr(module, name, 1) == 0]
        if unmeasured:
            pytest.skip(f"{where} is incomplete: {', '.join(unmeasured)} still 0")


def values_of(form, preset) -> dict:
    return dict(form.updates_from_preset(preset))


def peak_gb(page: str) -> float:
    return float(re.search(r"≈ ([\d.]+) GB", page)[1])


def test_the_tiers_are_read_from_the_preset_files():
    assert list(FLUX_TIERS) == ["24 GB", "16 GB", "12 GB"]
    for family, tiers in fit_tiers.TIERS.items():
        for name, tier in tiers.items():
            preset = load_preset(tier.file)
            match = fit_tiers.TIER_FILE.match(tier.file.stem)              # the name says the family inside
            assert match and match["family"] == family and (match["variant"] or "") == tier.variant, tier.file
            assert preset.model.family == tier.family == family
            assert tier.budget_gb == float(name.split()[-2]) == float(match["gb"])
            assert tier.values["model.block_swap"] == preset.model.block_swap
    assert fit_tiers.tier_for_vram("flux", 15.99) == "16 GB" and fit_tiers.tier_for_vram("flux", 139.8) == "24 GB"
    assert fit_tiers.tier_for_vram("flux", 8.0) == "12 GB" and fit_tiers.tier_for_vram("flux", None) is None


def test_zimage_has_four_tiers_and_a_card_picks_its_own():
    assert list(ZIMAGE_TIERS) == ["24 GB", "16 GB", "12 GB", "8 GB"]
    picks = {vram: fit_tiers.tier_for_vram("zimage", vram) for vram in (6.0, 7.99, 11.99, 15.99, 23.99, 80.0)}
    assert picks == {6.0: "8 GB", 7.99: "8 GB", 11.99: "12 GB", 15.99: "16 GB", 23.99: "24 GB", 80.0: "24 GB"}
    eight, twenty_four = ZIMAGE_TIERS["8 GB"].values, ZIMAGE_TIERS["24 GB"].values
    assert (eight["model.quantize_base"], eight["model.block_swap"], eight["dataset.resolution_px"]) == ("fp8", 18, 512)
    assert (twenty_four["model.quantize_base"], twenty_four["model.block_swap"]) == ("none", 0)
    assert all(t.values["training.gradient_checkpointing"] and t.values["training.cache_text_embeddings"]
               for t in ZIMAGE_TIERS.values())


def test_flux2_has_a_4b_and_a_9b_tier_for_16_gb_named_by_size_and_card():
    assert list(FLUX2_TIERS) == ["9B · 24 GB", "9B · 16 GB", "4B · 16 GB", "4B · 12 GB"]
    assert {name: t.file.name for name, t in FLUX2_TIERS.items()} == {
        "9B · 24 GB": "flux2-klein9b-lora-24gb.yaml", "9B · 16 GB": "flux2-klein9b-lora-16gb.yaml",
        "4B · 16 GB": "flux2-klein4b-lora-16gb.yaml", "4B · 12 GB": "flux2-klein4b-lora-12gb.yaml"}
    assert [t.variant for t in FLUX2_TIERS.values()] == ["klein9b", "klein9b", "klein4b", "klein4b"]
    assert fit_tiers.card_choices("flux2") == list(FLUX2_TIERS)
    assert fit_tiers.variants("flux") == [""] and list(FLUX_TIERS) == ["24 GB", "16 GB", "12 GB"]   # as before


@pytest.mark.parametrize("path, variant", [
    (KLEIN_9B, "klein9b"), (KLEIN_4B, "klein4b"), ("", "klein4b"),               # no model yet: the 4B
    ("D:\\ComfyUI\\models\\diffusion_models\\flux-2-klein-base-9b.safetensors", "klein9b"),
    ("/models/flux-2-klein-base-4b-fp8.safetensors", "klein4b"), ("/models/klein9b_8bit.safetensors", "klein9b"),
    ("~/.cache/huggingface/hub/models--black-forest-labs--FLUX.2-klein-base-9B/snapshots/"
     "0123456789abcdef0123456789abcdef01234567", "klein9b"),                    # the folder names it, not the hash
    ("/models/FLUX.2-klein-base-9B/", "klein9b"), ("/models/my-klein.safetensors", "klein4b"),
    ("/models/klein-19b.safetensors", "klein4b"),                               # 19B is no 9B
])
def test_the_model_path_says_which_size_of_flux2_the_tiers_are_for(path, variant):
    assert fit_tiers.variant_for("flux2", path) == variant
    assert fit_tiers.variant_for("flux", path) == ""                           # one model: no variants


def test_a_card_gets_the_flux2_tier_of_the_forms_model_size():
    picks_4b = {vram: fit_tiers.tier_for_vram("flux2", vram, KLEIN_4B) for vram in (8.0, 11.99, 15.99, 23.99, 80.0)}
    assert picks_4b == {8.0: "4B · 12 GB", 11.99: "4B · 12 GB", 15.99: "4B · 16 GB", 23.99: "4B · 16 GB",
                        80.0: "4B · 16 GB"}
    picks_9b = {vram: fit_tiers.tier_for_vram("flux2", vram, KLEIN_9B) for vram in (11.99, 15.99, 23.99, 80.0)}
    assert picks_9b == {11.99: "9B · 16 GB", 15.99: "9B · 16 GB", 23.99: "9B · 24 GB", 80.0: "9B · 24 GB"}
    assert fit_tiers.tier_for_vram("flux2", 15.99) == "4B · 16 GB"             # no model.path: the 4B
    assert fit_tiers.tier_for_vram("flux2", None, KLEIN_9B) is None
    # the picker's choice of another size's tier: the model's own tier for that card
    assert fit_tiers.tier_to_apply("flux2", "9B · 24 GB", None, KLEIN_4B) == "4B · 16 GB"
    assert fit_tiers.tier_to_apply("flux2", "4B · 12 GB", None, KLEIN_9B) == "9B · 16 GB"
    assert fit_tiers.tier_to_apply("flux2", "9B · 16 GB", None, KLEIN_9B) == "9B · 16 GB"
    assert fit_tiers.tier_to_apply("flux2", "12 GB", 12.0, KLEIN_4B) == "4B · 12 GB"   # a card size
    assert fit_tiers.tier_to_apply("flux", "16 GB", None, KLEIN_9B) == "16 GB"        # one model: as chosen
    assert fit_gauge.budget_of("9B · 16 GB") == (16.0, None) and fit_gauge.budget_of("12 GB") == (12.0, None)


def test_the_flux2_help_lists_both_sizes_and_marks_the_models(form):
    help_9b = fit_tiers.tier_help(form, "flux2", KLEIN_9B)
    assert all(f"**{name}**" in help_9b and t.file.name in help_9b for name, t in FLUX2_TIERS.items())
    assert "flux2-klein9b-lora-16gb.yaml`) ← this model" in help_9b and "This model: **9B**" in help_9b
    assert "lora-12gb.yaml`) ← this model" not in help_9b
    assert "This model: **4B**" in fit_tiers.tier_help(form, "flux2", "")
    assert "text encoder in fp8" in help_9b and "← this model" not in fit_tiers.tier_help(form, "flux")


def test_the_picker_offers_the_familys_tiers_or_card_sizes(form):
    assert fit_tiers.card_choices("zimage") == ["24 GB", "16 GB", "12 GB", "8 GB"]
    assert fit_tiers.card_choices("flux") == ["24 GB", "16 GB", "12 GB"]
    sizes = fit_tiers.card_choices("sd15")   # no tier files: every tier's card size, to compare with
    assert sizes == sorted(sizes, key=lambda s: -float(s.split()[0])) and {"24 GB", "12 GB", "8 GB"} <= set(sizes)
    assert fit_tiers.tier_for_vram("sd15", 24.0) is None
    assert "zimage-lora-8gb.yaml" in fit_tiers.tier_help(form, "zimage")
    assert "flux-lora" not in fit_tiers.tier_help(form, "zimage")
    assert "No VRAM tier presets for SD 1.x" in fit_tiers.tier_help(form, "sd15")


def test_the_gauge_reads_the_files_of_the_familys_own_keys():
    assert fit_gauge.file_keys("flux") == ("path", "single_file_config", "vae_path", "clip_l_path", "t5_path")
    assert fit_gauge.file_keys("zimage") == ("path", "single_file_config", "vae_path", "text_encoder_path")
    assert fit_gauge.file_keys("sd15") == ("path", "single_file_config", "vae_path")
    assert {"model.clip_l_path", "model.t5_path", "model.text_encoder_path"} <= set(fit_gauge.GAUGE_KEYS)


@pytest.mark.parametrize("tier_name", ["24 GB", "16 GB", "12 GB"])
def test_each_tier_applied_to_a_heavy_flux_run_fits_its_card(form, tier_name):
    values = values_of(form, preset_from_dict(HEAVY_FLUX))
    budget = FLUX_TIERS[tier_name].budget_gb
    assert "does not fit" in fit_gauge.gauge_html(form.to_preset(values), budget)
    values.update(fit_tiers.tier_updates(form, FLUX_TIERS[tier_name], values))
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
    preset = load_preset(fit_tiers.PRESETS_DIR / "flux-identity-fast.yaml")   # 512 px, rank 32, AdamW
    preset = preset_from_dict({**_data(form, preset), "model": {"family": "flux", "path": "D:/ComfyUI/flux1.sft",
                                                                "t5_path": "D:/ComfyUI/t5xxl_fp16.safetensors"}})
    values = values_of(form, preset)
    updates = fit_tiers.tier_updates(form, FLUX_TIERS["12 GB"], values)
    allowed = {form.widgets[k] for k in (*fit_tiers.TIER_KEYS, *fit_tiers.OPTIMIZER_KEYS)}
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
    values.update(fit_tiers.tier_updates(form, FLUX_TIERS["24 GB"], values))
    after = form.to_preset(values)
    tier = FLUX_TIERS["24 GB"].values
    assert after.optimizers["unet"].type == "adamw8bit" and after.optimizers["unet"].lr == tier["optimizers.unet.lr"]


def _data(form, preset) -> dict:
    return form.to_data(values_of(form, preset))


def test_sd_families_get_an_estimate_and_dit_a_message():
    for name in ("sd15-lora", "sdxl-lora", "sd2-v-finetune"):
        page = fit_gauge.gauge_html(load_preset(fit_tiers.PRESETS_DIR / f"{name}.yaml"), 8.0, "NVIDIA GeForce RTX 3070")
        assert "of 8 GB" in page and "(GeForce RTX 3070)" in page and "unet weights" in page, name
    no_card = fit_gauge.gauge_html(load_preset(fit_tiers.PRESETS_DIR / "sd15-lora.yaml"), None)
    assert "easel-fit-unknown" in no_card and "no NVIDIA GPU found" in no_card
    assert "No memory estimate" in fit_gauge.gauge_html(load_preset(fit_tiers.PRESETS_DIR / "dit-ddpm.yaml"), 12.0)


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


def test_the_picker_follows_the_family_and_apply_takes_the_familys_tier(monkeypatch):
    with gr.Blocks() as blocks:
        form = Form()
        for section in ("model", "dataset", "network", "training", "optimizers", "schedules", "sampling", "output",
                        "validation", "vae", "rl"):
            form.section(section)
        parts = fit_gauge.build(form)
        fit_gauge.wire(form, parts)
    tier, family = parts["tier"], form.widgets["model.family"]
    # a choice another family offered, still on its way after a switch, reaches the handlers instead of an error
    assert isinstance(tier, gr.Radio) and tier.get_block_name() == "radio"
    assert tier.preprocess("9B · 16 GB") == "9B · 16 GB" and tier.preprocess(fit_gauge.THIS_GPU) == fit_gauge.THIS_GPU
    follow = next(f for f in blocks.fns.values() if f.api_name == "fit_family")
    assert {block_id for block_id, _ in follow.targets} == {family._id}   # a person's choice of family
    out = parts["follow_family"]({family: "zimage", tier: "16 GB"})
    assert out[tier]["choices"] == [fit_gauge.THIS_GPU, "24 GB", "16 GB", "12 GB", "8 GB"]
    assert out[tier]["value"] == "16 GB" and out[parts["apply"]]["visible"] is True   # still offered: kept
    assert "zimage-lora-24gb.yaml" in out[parts["help"]]
    out = parts["follow_family"]({family: "flux", tier: "8 GB"})
    assert out[tier]["value"] == fit_gauge.THIS_GPU                                  # FLUX has no 8 GB tier
    out = parts["follow_family"]({family: "sd15", tier: "12 GB"})
    assert out[tier]["value"] == "12 GB" and out[parts["apply"]]["visible"] is False  # compare only, nothing to apply
    # Apply takes the tier of the form's family: Z-Image's 8 GB swaps 18 of its 34 blocks
    values = {**values_of(form, preset_from_dict(HEAVY_ZIMAGE)), tier: "8 GB"}
    apply = next(f for f in blocks.fns.values() if f.api_name == "fit_apply")
    values.update(apply.fn(dict(values)))
    after = form.to_preset(values)
    assert (after.model.quantize_base, after.model.block_swap, after.dataset.resolution_px) == ("fp8", 18, 512)
    assert after.model.family == "zimage" and after.model.path == "Tongyi-MAI/Z-Image"
    # a card size the family has no tier for: the family's tier made for that card (FLUX's smallest for 8 GB)
    values = {**values_of(form, preset_from_dict(HEAVY_FLUX)), tier: "8 GB"}
    values.update(apply.fn(dict(values)))
    assert form.to_preset(values).model.block_swap == FLUX_TIERS["12 GB"].values["model.block_swap"]
    # FLUX.2 klein: the picker lists both sizes' tiers; Apply takes the tier of the form's model size and keeps
    # the model: a 9B with the 4B's "16 GB" chosen gets the 9B's 16 GB settings (Qwen3-8B in fp8 too)
    out = parts["follow_family"]({family: "flux2", tier: "16 GB", form.widgets["model.path"]: KLEIN_9B})
    assert out[tier]["choices"] == [fit_gauge.THIS_GPU, *FLUX2_TIERS] and out[tier]["value"] == fit_gauge.THIS_GPU
    assert "This model: **9B**" in out[parts["help"]] and out[parts["apply"]]["visible"] is True
    nine = FLUX2_TIERS["9B · 16 GB"].values
    values = {**values_of(form, preset_from_dict(heavy_flux2(KLEIN_9B))), tier: "4B · 16 GB"}
    values.update(apply.fn(dict(values)))
    after = form.to_preset(values)
    assert after.model.path == KLEIN_9B and after.model.family == "flux2"
    assert (after.model.quantize_base, after.model.text_encoder_fp8) == (nine["model.quantize_base"], True)
    assert after.training.gradient_checkpointing and after.optimizers["unet"].type == "adamw8bit"
    # "this GPU": the detected card's tier for the model's size (a 12 GB card and a 4B file of ComfyUI's)
    comfy_4b = "D:/ComfyUI/models/diffusion_models/flux-2-klein-base-4b.safetensors"
    values = {**values_of(form, preset_from_dict(heavy_flux2(comfy_4b))), tier: fit_gauge.THIS_GPU}
    monkeypatch.setattr(fit_gauge, "detected_vram_gb", lambda: ("NVIDIA GeForce RTX 3060", 11.99))
    values.update(apply.fn(dict(values)))
    after = form.to_preset(values)
    assert after.model.path == comfy_4b and after.model.text_encoder_fp8 is True
    assert after.model.quantize_base == FLUX2_TIERS["4B · 12 GB"].values["model.quantize_base"]
    model_size = next(f for f in blocks.fns.values() if f.api_name == "fit_model_size")
    assert {block_id for block_id, _ in model_size.targets} == {form.widgets["model.path"]._id}
    sd = {**values_of(form, load_preset(fit_tiers.PRESETS_DIR / "sd15-lora.yaml")), tier: "12 GB"}
    assert apply.fn(dict(sd)) == {}                                                  # no tiers: nothing changes
    assert "of 12 GB" in parts["redraw"](dict(sd))


def _estimate(preset):
    from engine.models.fit import estimate, fit_settings, model_sizes

    return estimate(model_sizes(preset.model), fit_settings(preset))


@pytest.mark.parametrize("tier", [t for tiers in fit_tiers.TIERS.values() for t in tiers.values()],
                         ids=lambda t: t.file.stem)
def test_each_shipped_tier_preset_fits_its_own_card(tier):
    """The tier files as shipped (the real model sizes: their model.path is a Hub id) fit the card they are for:
    training, and the caching before it."""
    skip_without_memory_model(tier.family)
    fit = _estimate(load_preset(tier.file))
    assert fit.phases["training"] <= tier.budget_gb, fit.phases
    assert fit.vram_gb <= tier.budget_gb, fit.phases


@pytest.mark.parametrize("tier_name", list(ZIMAGE_TIERS))
def test_each_zimage_tier_applied_to_a_heavy_run_fits_its_card(form, tier_name):
    skip_without_memory_model("zimage")
    values = values_of(form, preset_from_dict(HEAVY_ZIMAGE))
    budget = ZIMAGE_TIERS[tier_name].budget_gb
    heavy = _estimate(form.to_preset(values))
    values.update(fit_tiers.tier_updates(form, ZIMAGE_TIERS[tier_name], values))
    after = form.to_preset(values)
    assert after.model.quantize_base == ZIMAGE_TIERS[tier_name].values["model.quantize_base"]
    fit = _estimate(after)
    assert fit.phases["training"] <= min(budget, heavy.phases["training"]), fit.phases
    page = fit_gauge.gauge_html(after, budget)
    assert "easel-fit-red" not in page and peak_gb(page) <= budget, page


@pytest.mark.parametrize("tier_name", list(FLUX2_TIERS), ids=[t.file.stem for t in FLUX2_TIERS.values()])
def test_each_flux2_tier_applied_to_a_heavy_run_of_its_size_fits_its_card(form, tier_name):
    skip_without_memory_model("flux2")
    tier = FLUX2_TIERS[tier_name]
    path = KLEIN_9B if tier.variant == "klein9b" else KLEIN_4B
    values = values_of(form, preset_from_dict(heavy_flux2(path)))
    assert fit_tiers.tier_for_vram("flux2", tier.budget_gb - 0.01, path) == tier_name   # the card's own tier
    values.update(fit_tiers.tier_updates(form, tier, values))
    after = form.to_preset(values)
    assert after.model.path == path and after.model.quantize_base == tier.values["model.quantize_base"]
    fit = _estimate(after)
    assert fit.phases["training"] <= tier.budget_gb and fit.vram_gb <= tier.budget_gb, fit.phases
    page = fit_gauge.gauge_html(after, tier.budget_gb)
    assert "easel-fit-red" not in page and peak_gb(page) <= tier.budget_gb, page


# torch and the libraries that pull it in are unimportable: building, wiring and drawing must not need them
WITHOUT_TORCH = """
import sys
for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes"):
    sys.modules[name] = None
sys.path.insert(0, {root!r})
import gradio as gr
from engine.config.load import load_preset
from engine.models.families import memory_model
from ui import fit_gauge, fit_tiers
from ui.fields import Form
with gr.Blocks():
    form = Form()
    for section in ("model", "dataset", "network", "training", "optimizers"):
        form.section(section)
    parts = fit_gauge.build(form)
    fit_gauge.wire(form, parts)
print(fit_gauge.detected_vram_gb())
assert "GB of 12 GB" in fit_gauge.gauge_html(load_preset(fit_tiers.TIERS["flux"]["12 GB"].file), 12.0)
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
