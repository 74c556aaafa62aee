"""Will it fit: the memory estimate (engine/models/fit/ with each family's memory.py) against the files it reads,
the engine's own fp8 storage, block swap and LoRA layers, the published FLUX figures, and the dry run that prints it."""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dataset_factory import make_clean_dataset

from engine.config.schema import ModelConfig
from engine.models import fit
from engine.models.families import capabilities
from engine.models.fit import GB, Settings, advice, describe_fit, estimate, model_sizes

ROOT = Path(__file__).resolve().parents[1]
FLUX_DEV = model_sizes(ModelConfig(family="flux", path="black-forest-labs/FLUX.1-dev"))   # known sizes, no files
# the settings of notes/performance-anchors.md's figures: LoRA rank 16, gradient checkpointing, cached text
BF16_1024 = Settings("flux", resolution_px=1024, rank=16, optimizer="adamw")


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory, tiny_model):
    """The session's tiny FLUX (read only) and its ComfyUI files and a dataset in this module's own folder."""
    from engine.models.tiny import write_flux_files

    root = tmp_path_factory.mktemp("fit")
    folder = tiny_model("flux")
    return {"folder": folder, "files": write_flux_files(folder, root / "comfyui"), "root": root}


def _numel_in(file: Path) -> int:
    from safetensors.numpy import load_file

    return sum(int(np.prod(a.shape)) for a in load_file(str(file)).values())


def test_a_tiny_flux_folder_counts_exactly_the_parameters_in_its_files(tiny_flux):
    from diffusers import FluxTransformer2DModel

    sizes = model_sizes(ModelConfig(family="flux", path=str(tiny_flux["folder"])))
    assert not sizes.notes, sizes.notes   # every part came from the files, nothing from the known sizes
    for name, component in sizes.components.items():
        files = sorted((tiny_flux["folder"] / name).glob("*.safetensors"))
        assert component.params == sum(_numel_in(f) for f in files), name
        assert component.stored_bytes == sum(f.stat().st_size for f in files) - sum(
            8 + int.from_bytes(f.read_bytes()[:8], "little") for f in files), name   # file size less its header
    transformer = FluxTransformer2DModel.from_pretrained(tiny_flux["folder"], subfolder="transformer")
    assert sizes.denoiser.params == sum(p.numel() for p in transformer.parameters())
    blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    assert len(sizes.denoiser.blocks) == blocks


def test_the_comfyui_files_of_the_same_model_count_the_same(tiny_flux):
    files = tiny_flux["files"]
    from_files = model_sizes(ModelConfig(family="flux", path=str(files["transformer"]),
                                         clip_l_path=str(files["clip_l"]), t5_path=str(files["t5"]),
                                         vae_path=str(files["ae"])))
    from_folder = model_sizes(ModelConfig(family="flux", path=str(tiny_flux["folder"])))
    assert not from_files.notes
    for name in ("transformer", "text_encoder", "vae"):
        assert from_files.components[name].params == from_folder.components[name].params, name
    # the BFL file fuses q/k/v (and linear1): LoRA on the same diffusers linears counts the same
    s = Settings("flux", rank=4, lora_modulation=True)
    assert estimate(from_files, s).trained_params == estimate(from_folder, s).trained_params
    assert estimate(from_files, replace(s, quantize_base="fp8")).parts[0] == \
        estimate(from_folder, replace(s, quantize_base="fp8")).parts[0]


def test_trained_params_equal_the_lora_layers_the_engine_adds(tiny_flux):
    from diffusers import FluxTransformer2DModel

    from engine.config.schema import NetworkConfig
    from engine.models.families.flux.record import FLUX, lora_target_names
    from engine.models.lora import add_lora

    sizes = model_sizes(ModelConfig(family="flux", path=str(tiny_flux["folder"])))
    added = {}
    for modulation in (False, True):
        transformer = FluxTransformer2DModel.from_pretrained(tiny_flux["folder"], subfolder="transformer")
        names = lora_target_names(transformer, NetworkConfig(lora_modulation=modulation))
        added[modulation] = sum(p.numel() for p in add_lora(transformer, 4, 4.0, 0.0, names))
        assert estimate(sizes, Settings("flux", rank=4, lora_modulation=modulation)).trained_params == added[modulation]
    assert added[True] > added[False]
    from transformers import CLIPTextModel

    clip = CLIPTextModel.from_pretrained(tiny_flux["folder"], subfolder="text_encoder")
    clip_params = add_lora(clip, 4, 4.0, 0.0, list(FLUX.te_lora_targets))
    assert estimate(sizes, Settings("flux", rank=4, train_text_encoder=True)).trained_params == \
        added[False] + sum(p.numel() for p in clip_params)   # T5 never trains


def test_the_copied_family_data_agrees_with_the_family_records():
    from engine.models.families import FOLDERS, get_family, memory_model
    from engine.models.families.flux import record as flux
    from engine.models.families.flux.memory import FLUX_TARGETS

    # the DiT trained from scratch (sized by model.dit, a few MB) has no fit estimate yet: fit covers the others
    assert {name for name in FOLDERS if memory_model(name) is not None} == set(FOLDERS) - {"dit"}
    assert set(FLUX_TARGETS) == set(flux.DOUBLE_BLOCK_LINEARS + flux.SINGLE_BLOCK_LINEARS)
    assert set(memory_model("flux").modulation_targets) == {t for v in flux.MODULATION_LINEARS.values() for t in v}
    for name in set(FOLDERS) - {"dit"}:
        memory, family = memory_model(name), get_family(name)
        assert memory.te_lora_targets == family.te_lora_targets, name
        assert memory.text_encoders == family.text_encoder_names, name
        trainable = family.caps.trainable_text_encoders  # None: all of them; 0: none (Z-Image, Chroma)
        assert len(memory.trainable_text_encoders) == (trainable if trainable is not None else
                                                       len(family.text_encoder_names)), name
        if name != "flux":
            assert memory.lora_targets == family.lora_targets, name


def test_the_known_flux_layout_is_diffusers_own_and_the_published_sizes():
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from engine.models.families.flux import memory as flux_memory

    for guidance, total in ((True, 11_901_408_320), (False, 11_891_178_560)):   # FLUX.1-dev, FLUX.1-schnell
        with init_empty_weights():
            model = FluxTransformer2DModel(guidance_embeds=guidance)
        layout = flux_memory.flux_tensors(guidance=guidance)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: s for k, (s, _) in layout.items()}
        assert fit.component_from_tensors("transformer", layout, "", flux_memory.LAYOUT).params == total
    blocks = FLUX_DEV.denoiser.blocks
    assert [b[0] for b in blocks] == [339_831_296] * 19 + [141_591_808] * 38
    schnell = model_sizes(ModelConfig(family="flux", path="black-forest-labs/FLUX.1-schnell"))
    assert estimate(schnell, Settings("flux")).tokens == 32 * 32 + 256   # schnell's T5 length
    assert estimate(FLUX_DEV, Settings("flux")).tokens == 32 * 32 + 512
    assert "the sizes of the real FLUX.1-dev are used" in FLUX_DEV.notes[0]


def test_fp8_halves_the_transformer_weights_and_nf4_quarters_them():
    weight = {q: estimate(FLUX_DEV, Settings("flux", quantize_base=q)).parts[0].vram_gb
              for q in ("none", "fp8", "int8", "nf4")}
    cast_up = 3072 * 21504 * 2 / GB   # fp8/int8/nf4: one layer at a time (linear1) in bf16 while it runs
    assert weight["none"] == pytest.approx(11_901_408_320 * 2 / GB)
    assert 0.49 < (weight["fp8"] - cast_up) / weight["none"] < 0.51        # the embedders stay in bf16
    assert 0.49 < (weight["int8"] - cast_up) / weight["none"] < 0.51
    assert 0.27 < (weight["nf4"] - cast_up) / weight["none"] < 0.30        # 4 bits + an fp32 absmax per 64


def test_fp8_bytes_are_what_store_in_fp8_leaves(tiny_flux):
    import torch
    from diffusers import FluxTransformer2DModel

    from engine.models.base_storage import store_in_fp8

    transformer = FluxTransformer2DModel.from_pretrained(tiny_flux["folder"], subfolder="transformer",
                                                         dtype=torch.bfloat16)
    store_in_fp8(transformer, torch.bfloat16, block_lists=capabilities("flux").block_lists)
    measured = sum(p.numel() * p.element_size() for p in transformer.parameters())
    c = model_sizes(ModelConfig(family="flux", path=str(tiny_flux["folder"]))).denoiser
    assert fit.quantized_bytes(c.params, c.fp8_params, c.bnb_params, c.bnb_rows, "fp8", 2) == measured
    assert fit.quantized_bytes(c.params, c.fp8_params, c.bnb_params, c.bnb_rows, "none", 2) == c.params * 2


def test_block_swap_moves_exactly_the_swapped_blocks_from_vram_to_ram():
    s = Settings("flux", resolution_px=1024, quantize_base="fp8", optimizer="adamw8bit")
    four, twelve = estimate(FLUX_DEV, replace(s, block_swap=4)), estimate(FLUX_DEV, replace(s, block_swap=12))
    eight_singles = 8 * fit.block_bytes(FLUX_DEV.denoiser, "fp8", 2)[-1] / GB   # blocks 45-52: single blocks
    assert four.allocated_gb - twelve.allocated_gb == pytest.approx(eight_singles)
    assert twelve.ram_phases["training"] - four.ram_phases["training"] == pytest.approx(eight_singles)
    none = estimate(FLUX_DEV, s)
    two_in_flight = 2 * fit.block_bytes(FLUX_DEV.denoiser, "fp8", 2)[-1] / GB
    assert none.allocated_gb - four.allocated_gb == pytest.approx(4 * two_in_flight / 2 - two_in_flight)
    # the same blocks the engine swaps: the last ones, single blocks first
    assert fit.swapped_blocks(FLUX_DEV.denoiser, 40) == list(range(17, 57))


def test_the_engine_swaps_the_blocks_the_estimate_counts(tiny_flux):
    from diffusers import FluxTransformer2DModel

    from engine.models.block_swap import swap_blocks

    transformer = FluxTransformer2DModel.from_pretrained(tiny_flux["folder"], subfolder="transformer")
    c = model_sizes(ModelConfig(family="flux", path=str(tiny_flux["folder"]))).denoiser
    for n in (1, 2):
        swap = swap_blocks(transformer, n, "cpu", capabilities("flux").block_lists)
        assert [sum(p.numel() for p in b.parameters()) for b in swap.blocks] == \
            [c.blocks[i][0] for i in fit.swapped_blocks(c, n)]
        swap.remove()


def test_cached_text_encoders_are_not_in_the_training_peak():
    cached, live = estimate(FLUX_DEV, BF16_1024), estimate(FLUX_DEV, replace(BF16_1024, cache_text=False))
    encoders = (4_762_310_656 + 123_060_480) * 2 / GB
    assert not any("text encoder" in p.what for p in cached.parts if p.vram_gb)
    assert live.allocated_gb - cached.allocated_gb == pytest.approx(encoders + 0.2)
    # ... they wait in RAM instead, and hold the card only while the captions are encoded
    assert cached.ram_phases["training"] - live.ram_phases["training"] == pytest.approx(encoders, abs=0.01)
    assert cached.phases["caching text"] > encoders and live.phases["caching text"] == 0
    # training CLIP-L keeps both on the card: nothing is cached while a text encoder trains (data/cache.py)
    clip = estimate(FLUX_DEV, replace(BF16_1024, train_text_encoder=True))
    assert [p.what for p in clip.parts if "text encoder" in p.what] == [
        "CLIP-L text encoder on the GPU (trained)", "T5-XXL text encoder on the GPU (outputs not cached)"]
    assert clip.phases["caching text"] == 0


def test_flux_dev_at_1024_lands_where_the_published_figures_are():
    """bf16 base, rank 16, AdamW, checkpointing, cached text: SimpleTuner's quickstart (FLUX.md) says "a bit more
    than 30G" for rank 16 on all linears without quantization; the HF flux-qlora blog measured ~26 GB for bf16 LoRA
    at 512x768 with rank 4 (a smaller run: a floor). Both are GPU totals, as vram_gb is."""
    assert 26 < estimate(FLUX_DEV, BF16_1024).vram_gb < 33
    hf_blog = Settings("flux", resolution_px=640, rank=4, optimizer="adamw8bit")   # 640^2 ~ 512 x 768 pixels
    assert 23 < estimate(FLUX_DEV, hf_blog).vram_gb < 29                          # ~26 GB
    assert 8 < estimate(FLUX_DEV, replace(hf_blog, quantize_base="nf4")).phases["training"] < 11   # ~9 GB
    # SimpleTuner: int8 "a bit more than 18G"; its lowest NF4 run at 512 px 9090 MiB (Lion 8-bit)
    assert 15.5 < estimate(FLUX_DEV, replace(BF16_1024, quantize_base="int8")).phases["training"] < 20
    nf4_512 = Settings("flux", resolution_px=512, quantize_base="nf4", optimizer="lion8bit")
    assert 8 < estimate(FLUX_DEV, nf4_512).phases["training"] < 10.5
    # sd-scripts docs (fp8 base): 24 GB trains batch 2; 16 GB needs batch 1 and block swap
    fp8 = Settings("flux", resolution_px=1024, quantize_base="fp8", optimizer="adamw8bit")
    assert 16 < estimate(FLUX_DEV, fp8).vram_gb < 20 < estimate(FLUX_DEV, replace(fp8, batch_size=2)).vram_gb < 24


def test_advice_names_the_savers_in_cost_order_with_their_savings():
    # bf16 at 512 px needs ~24 GB; with 20 free fp8 alone fits, and so does block swap alone
    s = Settings("flux", resolution_px=512, rank=16, optimizer="adamw")
    options = advice(FLUX_DEV, s, 20.0)
    assert tuple(sv.words for sv in options[0]) == ("fp8 base",)
    assert [o[0].words.split()[0] for o in options] == ["fp8", "block"]     # the cheapest first, then swap alone
    for option in options:
        after = estimate(FLUX_DEV, replace(s, **{_field(k): v for sv in option for k, v in sv.changes.items()}))
        assert option[-1].vram_gb == pytest.approx(after.phases["training"]) and after.vram_gb <= 20.0
        assert option[0].saves_gb == pytest.approx(estimate(FLUX_DEV, s).vram_gb - option[0].vram_gb)
    # too little for fp8 alone: the cheapest path is fp8, then just enough block swap
    path = advice(FLUX_DEV, replace(s, resolution_px=1024), 11.6)[0]
    assert [sv.words.split()[0] for sv in path] == ["fp8", "block"] and path[-1].vram_gb <= 11.6
    swap = int(path[1].words.split()[-1])
    fewer = estimate(FLUX_DEV, replace(s, resolution_px=1024, quantize_base="fp8", block_swap=swap - 1))
    assert fewer.phases["training"] > 11.6
    # a budget an 8-bit optimizer meets alone: it comes after block swap and before the resolution
    fp8 = replace(s, resolution_px=1024, quantize_base="fp8")
    singles = advice(FLUX_DEV, fp8, estimate(FLUX_DEV, fp8).vram_gb - 0.2)
    assert [o[0].words.rsplit(" ", 1)[0] for o in singles] == ["block swap", "adamw8bit", "768"]
    assert advice(FLUX_DEV, fp8, 40.0) == []


def _field(key: str) -> str:
    return {"model.quantize_base": "quantize_base", "model.block_swap": "block_swap",
            "optimizers.unet.type": "optimizer", "dataset.resolution_px": "resolution_px"}[key]


def test_the_message_says_what_is_needed_what_is_free_and_what_to_turn_on():
    s = Settings("flux", resolution_px=512)
    lines = describe_fit(estimate(FLUX_DEV, s), advice(FLUX_DEV, s, 11.6), "NVIDIA GeForce RTX 4070 Ti", 11.6,
                         32.0, 20.0)
    verdict = next(line for line in lines if "your RTX 4070 Ti has 11.6 GB free" in line)
    assert verdict.startswith(f"needs ~{estimate(FLUX_DEV, s).vram_gb:.1f} GB")
    assert "turn on fp8 base (-" in verdict and " and block swap " in verdict
    assert any("--set model.quantize_base=fp8 --set model.block_swap=" in line for line in lines)
    assert any(line.startswith("RAM: needs ~") and "this PC has 32.0 GB" in line for line in lines)
    fits = describe_fit(estimate(FLUX_DEV, s), [], "NVIDIA H100", 79.0, None, None)
    assert any(line.startswith("fits: your H100 has 79.0 GB free") for line in fits)


def test_without_files_the_known_sizes_stand_in_and_say_so(tmp_path):
    sizes = model_sizes(ModelConfig(family="sdxl", path=str(tmp_path / "missing.safetensors")))
    assert all(c.known for c in sizes.components.values())
    assert sizes.components["unet"].params == 2_567_463_684 and "not a file or folder" in sizes.notes[0]
    assert 5 < estimate(sizes, Settings("sdxl", resolution_px=1024, rank=32, optimizer="adamw8bit")).vram_gb < 12


def _engine_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], check=False, cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, encoding="utf-8", timeout=120)


def _flux_dry_run(tiny_flux, env):
    data = tiny_flux["root"] / "data"
    if not data.exists():
        make_clean_dataset(data, n=4)
    return _engine_cli("train", "presets/flux-identity-fast.yaml", "--dry-run", "--set",
                       f"model.path={tiny_flux['folder']}", "--set", f"dataset.path={data}", env=env)


def test_the_dry_run_of_a_flux_preset_shows_the_estimate_and_says_no_gpu_was_found(tiny_flux, tmp_path):
    no_tools = tmp_path / "empty bin"
    no_tools.mkdir()
    result = _flux_dry_run(tiny_flux, {"PATH": str(no_tools)})   # no nvidia-smi to be found
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "# will it fit" in out and "\nneeds ~" in out and "transformer weights (fp8)" in out
    assert "no NVIDIA GPU found" in out and "Traceback" not in result.stderr


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a bash script")
def test_the_dry_run_compares_with_the_free_memory_nvidia_smi_reports(tiny_flux, fake_nvidia_smi):
    fake_nvidia_smi('case "$1" in\n  *memory.free*) echo "96 MiB";;\n'
                    '  *) echo "NVIDIA GeForce RTX 4070 Ti, 581.57, 8.9, 12282 MiB";;\nesac')
    result = _flux_dry_run(tiny_flux, {"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert "your RTX 4070 Ti has 0.1 GB free" in result.stdout   # 96 MiB: not even the tiny model fits


def test_the_dry_run_stays_torch_free(tiny_flux):
    data = tiny_flux["root"] / "data"
    make_clean_dataset(data, n=4) if not data.exists() else None
    code = ("import sys; from engine.cli import train; rc = train(['presets/flux-identity-fast.yaml', '--dry-run', "
            f"'--set', 'model.path={tiny_flux['folder'].as_posix()}', '--set', 'dataset.path={data.as_posix()}']); "
            "assert 'torch' not in sys.modules, 'the dry run imported torch'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
