"""Will it fit, for FLUX.2 klein 4B and 9B (engine/models/families/flux2/memory.py): the real sizes recounted on the
meta device, the real-size models as header-only files in diffusers' and BFL's (ComfyUI's) layouts
(tests/support/flux2_files.py), what each memory saver does to the card and to RAM, caching the captions, the
engine's own LoRA, fp8 and block swap on the tiny model, the published figures, and the dry run on the files."""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config.schema import ModelConfig
from engine.models import fit
from engine.models.families.flux2 import memory as fm
from engine.models.fit import GB, Settings, estimate, model_sizes

ROOT = Path(__file__).resolve().parents[1]
HUB = {"4b": "black-forest-labs/FLUX.2-klein-base-4B", "9b": "black-forest-labs/FLUX.2-klein-base-9B"}
KNOWN = {v: model_sizes(ModelConfig(family="flux2", path=path)) for v, path in HUB.items()}   # no files
# (transformer, its double and single blocks, Qwen3, the width, Qwen3's width) of the real models
REAL = {"4b": (3_875_544_576, (245_367_296, 5), (122_683_648, 20), 4_022_468_096, 3072, 2560),
        "9b": (9_078_581_248, (436_208_128, 8), (218_104_064, 24), 8_190_735_360, 4096, 4096)}
AE = 84_046_372
SPARSE = pytest.mark.skipif(os.name == "nt", reason="header-only files are sparse files; NTFS would fill them")


@pytest.mark.parametrize("variant", ["4b", "9b"])
def test_the_known_sizes_are_the_real_configs_counted_on_the_meta_device(variant):
    from support.flux2_files import real_flux2_tensors

    real = real_flux2_tensors(variant)
    shapes = lambda t: {k: s for k, (s, _) in t.items()}   # noqa: E731
    assert shapes(fm.klein_tensors(variant)) == shapes(real["transformer"])
    assert shapes(fm.qwen3_tensors(variant)) == shapes(real["text_encoder"])
    params, double, single, qwen3, width, qwen3_width = REAL[variant]
    count = {part: fit.component_from_tensors(part, t, "", fm.LAYOUT).params for part, t in real.items()}
    assert count == {"transformer": params, "text_encoder": qwen3, "vae": AE}
    assert fm.MEMORY["flux2"].known == {"vae": AE}
    sizes = KNOWN[variant]
    den, te = sizes.denoiser, sizes.components["text_encoder"]
    assert (den.params, den.hidden, te.params, te.hidden) == (params, width, qwen3, qwen3_width)
    assert [b[0] for b in den.blocks] == [double[0]] * double[1] + [single[0]] * single[1]
    assert den.doubles == double[1] and not den.guidance and "real FLUX.2 klein" in sizes.notes[0]
    assert fm.variant_of("C:/models/flux-2-klein-base-9b-fp8.safetensors") == "9b" == fm.variant_of(HUB["9b"])
    assert fm.variant_of("") == "4b" == fm.variant_of(HUB["4b"])


@pytest.mark.parametrize("prefix", ["", "diffusion_model.", "model.diffusion_model."])
@pytest.mark.parametrize("variant", ["4b", "9b"])
def test_bfls_names_count_as_diffusers_own(variant, prefix):
    from support.flux2_files import bfl_names

    diffusers = fit.component_from_tensors("transformer", fm.klein_tensors(variant), "", fm.LAYOUT)
    bfl = bfl_names(fm.klein_tensors(variant))
    assert any(".img_attn.qkv." in k for k in bfl) and any(k.endswith(".query_norm.scale") for k in bfl)
    c = fit.component_from_tensors("transformer", {prefix + k: v for k, v in bfl.items()}, "", fm.LAYOUT)
    for field in ("params", "fp8_params", "bnb_params", "blocks", "doubles", "block_kinds", "hidden"):
        assert getattr(c, field) == getattr(diffusers, field), field
    assert [sorted(b) for b in c.block_tensors] == [sorted(b) for b in diffusers.block_tensors]   # qkv split in 3
    assert sorted(c.linears) == sorted(ln for ln in diffusers.linears if fm.LAYOUT.match(ln[0] + "."))
    spec = fm.MEMORY["flux2"]
    assert fit.lora_params(c, spec.lora_targets, 8, spec.lora_scope) == \
        fit.lora_params(diffusers, spec.lora_targets, 8, spec.lora_scope)


def test_the_bfl_names_are_the_ones_diffusers_converter_reads():
    """diffusers' own converter (what flux2/loading.py reads a BFL file with) turns the BFL names back into the
    model's: the reverse map the header files use, and so memory.py's map they are counted with, is diffusers'."""
    import torch
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    from support.flux2_files import bfl_names

    layout = fm.klein_tensors("4b")
    meta = {k: torch.empty(shape, device="meta") for k, (shape, _) in bfl_names(layout).items()}
    converted = convert_flux2_transformer_checkpoint_to_diffusers(meta)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: s for k, (s, _) in layout.items()}
    for module in {k.rsplit(".", 1)[0] for k in bfl_names(layout)}:
        parts = fm.diffusers_modules_of(module)
        assert all(part + ".weight" in layout for part in parts), (module, parts)


@pytest.fixture(scope="module")
def headers(tmp_path_factory):
    """The real klein 4B and 9B as header-only files (a few KB on disk each): diffusers folders and ComfyUI's files,
    bf16, and the 4B's with fp8 blocks."""
    from support.flux2_files import write_flux2_headers

    root = tmp_path_factory.mktemp("klein headers")
    return {"4b": write_flux2_headers(root / "4b", "4b"), "9b": write_flux2_headers(root / "9b", "9b"),
            "4b fp8": write_flux2_headers(root / "4b fp8", "4b", fp8_blocks=True)}


def _sizes_of(files: dict, folder: bool = False):
    if folder:
        return model_sizes(ModelConfig(family="flux2", path=str(files["folder"])))
    return model_sizes(ModelConfig(family="flux2", path=str(files["transformer"]),
                                   text_encoder_path=str(files["text_encoder"]), vae_path=str(files["vae"])))


@SPARSE
@pytest.mark.parametrize("variant", ["4b", "9b"])
def test_the_real_size_files_of_both_layouts_are_read_from_their_headers(headers, variant):
    folder, comfyui = _sizes_of(headers[variant], True), _sizes_of(headers[variant])
    params, double, single, qwen3, width, qwen3_width = REAL[variant]
    written = list(headers[variant]["folder"].rglob("*.safetensors"))
    assert sum(f.stat().st_size for f in written) > 14 * GB > 1000 * sum(f.stat().st_blocks * 512 for f in written)
    for sizes in (folder, comfyui):
        assert not sizes.notes, sizes.notes   # every part from its file, none from the known sizes
        parts = sizes.components
        assert (parts["transformer"].params, parts["text_encoder"].params, parts["vae"].params) == (params, qwen3, AE)
        assert len(parts["transformer"].blocks) == double[1] + single[1] and parts["transformer"].doubles == double[1]
        assert parts["text_encoder"].hidden == qwen3_width and parts["transformer"].hidden == width
    s = Settings("flux2", resolution_px=1024, rank=16)
    for q in ("none", "fp8"):
        runs = [estimate(sizes, replace(s, quantize_base=q)) for sizes in (comfyui, folder, KNOWN[variant])]
        assert runs[0].parts == runs[1].parts == runs[2].parts, q      # the same estimate from every source
        assert runs[0].phases == runs[1].phases == runs[2].phases, q
    # rank x (in + out): 8 attention linears of width^2; 2 SwiGLU inputs (6x out) and outputs (3x in) a double
    # block; the single block's fused input (9x out) and output (4x in)
    block_linears = double[1] * (8 * 2 * width + 2 * (7 * width + 4 * width)) + single[1] * (10 * width + 5 * width)
    assert estimate(comfyui, s).trained_params == estimate(folder, s).trained_params == 16 * block_linears
    # fp8 keeps the blocks' linears in 1 byte: every block halves, less its norms
    for bf16, fp8 in zip(fit.block_bytes(folder.denoiser, "none", 2), fit.block_bytes(folder.denoiser, "fp8", 2)):
        assert 0.5 < fp8 / bf16 < 0.5001
    # outside the blocks the embedders, the final layer and norm_out stay in bf16 (the shared modulation goes to fp8)
    whole = fit.quantized_bytes(params, folder.denoiser.fp8_params, 0, 0, "fp8", 2) / (params * 2)
    assert 0.50 < whole < 0.51


@SPARSE
def test_the_files_are_the_kinds_the_loader_expects(headers):
    """flux2/loading.py checks every file's tensor names before reading it: the header files pass as what they are."""
    from safetensors import safe_open

    from engine.models.families.flux2.names import kind_of_keys

    def kind(path):
        with safe_open(str(path), "np") as f:
            return kind_of_keys(list(f.keys()))

    files = headers["4b"]
    assert kind(files["transformer"]) == "flux2_transformer" == kind(headers["4b fp8"]["transformer"])
    assert kind(files["folder"] / "transformer" / "diffusion_pytorch_model.safetensors") == \
        "flux2_transformer_diffusers"
    assert kind(files["vae"]) == "flux2_ae"
    assert headers["4b fp8"]["transformer"].name == "flux-2-klein-base-4b-fp8.safetensors"
    assert _sizes_of(headers["4b fp8"]).denoiser.dtype == "F8_E4M3" and _sizes_of(files).denoiser.dtype == "BF16"


@SPARSE
@pytest.mark.parametrize("variant", ["4b", "9b"])
def test_the_savers_lower_the_card_and_block_swap_moves_its_pinned_blocks_to_ram(headers, variant):
    sizes = _sizes_of(headers[variant])
    base = Settings("flux2", resolution_px=1024, rank=16, optimizer="adamw", gradient_checkpointing=False)
    peak = lambda s: estimate(sizes, s).phases["training"]   # noqa: E731
    checkpointed = replace(base, gradient_checkpointing=True)
    assert peak(checkpointed) < peak(base) - 5                  # tens of GB of activations down to a few
    fp8 = replace(checkpointed, quantize_base="fp8")
    assert peak(fp8) < peak(checkpointed) - (3 if variant == "4b" else 7)
    assert peak(replace(fp8, optimizer="adamw8bit")) < peak(fp8)
    assert peak(replace(fp8, resolution_px=512)) < peak(fp8) - 1
    most = {"4b": 13, "9b": 16}[variant]                         # musubi-tuner docs/flux_2.md's most with fp8
    swaps = [estimate(sizes, replace(fp8, block_swap=n)) for n in (0, 6, most)]
    assert swaps[0].phases["training"] > swaps[1].phases["training"] > swaps[2].phases["training"]
    assert swaps[0].ram_phases["training"] < swaps[1].ram_phases["training"] < swaps[2].ram_phases["training"]
    den = sizes.denoiser
    total = len(den.blocks)
    assert fit.swapped_blocks(den, most) == list(range(total - most, total))   # the last single blocks
    # RAM holds the swapped blocks' pinned copies, each tensor rounded up to a power of two
    pinned = sum(fit.pinned_bytes(den, i, "fp8", 2) for i in fit.swapped_blocks(den, most)) / GB
    plain = sum(fit.block_bytes(den, "fp8", 2)[i] for i in fit.swapped_blocks(den, most)) / GB
    assert swaps[2].ram_phases["training"] - swaps[0].ram_phases["training"] == pytest.approx(pinned)
    width = den.hidden
    one = {"4b": 2**27 + 2**26, "9b": 2**28 + 2**26}[variant]   # a single block: fused in (9x) and out (4x) linears
    assert fit.pinned_bytes(den, total - 1, "fp8", 2) == one + 2 * 2**8
    assert one > 9 * width * width + 4 * width * width
    assert 1.0 < pinned / plain < 1.8


@pytest.mark.parametrize("variant", ["4b", "9b"])
def test_caching_the_captions_holds_qwen3_and_its_states_on_the_card(variant):
    """record.encode_text encodes 16 captions of 512 tokens with the bare Qwen3Model inside the causal LM: every
    hidden state lives beside Qwen3 itself, no vocabulary logits; fp8 storage of Qwen3 is what the smaller tiers
    need."""
    sizes, width = KNOWN[variant], REAL[variant][5]
    s = Settings("flux2", resolution_px=512, quantize_base="fp8", optimizer="adamw8bit")
    qwen3 = REAL[variant][3] * 2 / GB
    states = 16 * 512 * width * fm.ENCODER_STATES * 2 / GB
    bf16, fp8 = estimate(sizes, s), estimate(sizes, replace(s, text_encoder_fp8=True))
    assert bf16.phases["caching text"] == pytest.approx((qwen3 + states) * 1.07 + 0.6)
    assert 1.0 < states < 4.0
    assert fp8.phases["caching text"] < bf16.phases["caching text"] - qwen3 * 0.4
    assert not any("Qwen3" in p.what for p in bf16.parts if p.vram_gb)   # cached: not on the card while training
    # the cache in RAM: 3 stacked layers of Qwen3's width per token (7680 / 12288 wide)
    cached = estimate(sizes, replace(s, captions=100)).ram_phases["training"] - bf16.ram_phases["training"]
    assert cached == pytest.approx(100 * 512 * 3 * width * 2 / GB)


def test_trained_params_equal_the_lora_layers_the_engine_adds(tiny_model):
    from diffusers import Flux2Transformer2DModel

    from engine.config.schema import NetworkConfig
    from engine.models.families import get_family
    from engine.models.lora import add_lora

    folder = tiny_model("flux2")
    sizes = model_sizes(ModelConfig(family="flux2", path=str(folder)))
    family = get_family("flux2")
    assert fm.FLUX2_TARGETS == family.lora_targets
    transformer = Flux2Transformer2DModel.from_pretrained(folder, subfolder="transformer")
    names = family.lora_target_names(transformer, NetworkConfig())
    added = sum(p.numel() for p in add_lora(transformer, 4, 4.0, 0.0, names))
    assert estimate(sizes, Settings("flux2", rank=4)).trained_params == added


def test_fp8_and_block_swap_hold_what_the_estimate_counts(tiny_model):
    import torch
    from diffusers import Flux2Transformer2DModel

    from engine.models.base_storage import store_in_fp8
    from engine.models.block_swap import swap_blocks
    from engine.models.families import capabilities

    folder = tiny_model("flux2")
    c = model_sizes(ModelConfig(family="flux2", path=str(folder))).denoiser
    block_lists = capabilities("flux2").block_lists
    transformer = Flux2Transformer2DModel.from_pretrained(folder, subfolder="transformer", dtype=torch.bfloat16)
    transformer.requires_grad_(False)   # the frozen base: what block swap pins
    assert len(c.blocks) == sum(len(getattr(transformer, name)) for name in block_lists)
    for n in (1, 2):
        swap = swap_blocks(transformer, n, "cpu", block_lists)
        swapped = fit.swapped_blocks(c, n)
        assert [sum(p.numel() for p in b.parameters()) for b in swap.blocks] == [c.blocks[i][0] for i in swapped]
        assert [sorted(cpu.numel() for _, cpu in pairs) for pairs in swap.store] == \
            [sorted(t[0] for t in c.block_tensors[i]) for i in swapped]
        swap.remove()
    store_in_fp8(transformer, torch.bfloat16, block_lists=block_lists)
    measured = sum(p.numel() * p.element_size() for p in transformer.parameters())
    assert fit.quantized_bytes(c.params, c.fp8_params, c.bnb_params, c.bnb_rows, "fp8", 2) == measured
    fp8_blocks = [sum(p.numel() * p.element_size() for p in b.parameters()) for name in block_lists
                  for b in getattr(transformer, name)]
    assert fit.block_bytes(c, "fp8", 2) == fp8_blocks


def _s(**kw) -> Settings:
    return Settings("flux2", **{"resolution_px": 1024, "optimizer": "adamw8bit", **kw})


# Published figures (notes/peers-2026-12.md; their GB may be 10**9 or 2**30 bytes), the training phase
ANCHORS = [
    # SimpleTuner's FLUX.2 quickstart: klein 4B about 12 GB in bf16, 8 GB int8; 9B about 22 / 14 GB (settings unsaid:
    # here 1024 px, rank 16, 8-bit AdamW, checkpointing)
    ("ST 4B bf16", "4b", _s(), 9.0, 13.5), ("ST 4B int8", "4b", _s(quantize_base="int8"), 5.5, 9.5),
    ("ST 9B bf16", "9b", _s(), 19.0, 25.0), ("ST 9B int8", "9b", _s(quantize_base="int8"), 11.5, 16.0),
    # OneTrainer's "#flux2 LoRA 16GB" / "8GB" presets: klein-base-9B, int8 W8A8, fp8 Qwen3, 512 px, batch 2, AdamW,
    # rank 16; the 8 GB one offloads 70 % of the blocks (22 of 32 here)
    ("OT 16 GB", "9b", _s(quantize_base="int8", resolution_px=512, batch_size=2, optimizer="adamw"), 9.0, 16.0),
    ("OT 8 GB", "9b", _s(quantize_base="int8", resolution_px=512, batch_size=2, optimizer="adamw", block_swap=22),
     5.0, 9.2),
    # ai-toolkit#653: klein-9B on a 12 GB 3060 with layer offloading (resolution unsaid; here musubi's most blocks
    # swapped with fp8, 16); ai-toolkit PR #666: klein-9B in fp8 on 16 GB with 60 % offloaded (19 blocks)
    ("AIT#653 12 GB", "9b", _s(quantize_base="fp8", block_swap=16), 7.0, 12.0),
    ("AIT PR #666 16 GB", "9b", _s(quantize_base="fp8", block_swap=19), 7.0, 16.0),
]


@pytest.mark.parametrize(("what", "variant", "settings", "low", "high"), ANCHORS)
def test_the_published_figures(what, variant, settings, low, high):
    assert low < estimate(KNOWN[variant], settings).phases["training"] < high, what


def _dry_run(preset: str, tmp_path: Path, *sets: str) -> str:
    from dataset_factory import make_clean_dataset

    make_clean_dataset(tmp_path / "data", n=4)
    args = [a for kv in (*sets, f"dataset.path={tmp_path / 'data'}") for a in ("--set", kv)]
    result = subprocess.run([sys.executable, "-m", "engine", "train", preset, "--dry-run", *args], cwd=ROOT,
                            capture_output=True, text=True, encoding="utf-8", env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout[result.stdout.index("# will it fit"):]


@SPARSE
def test_the_4b_dry_run_says_vram_and_ram_from_its_comfyui_files(headers, tmp_path):
    """The command a user runs before training: the 12 GB 4B tier on the files a ComfyUI user has (BFL's layout)."""
    files = headers["4b"]
    out = _dry_run("presets/flux2-klein4b-lora-12gb.yaml", tmp_path, f"model.path={files['transformer']}",
                   f"model.text_encoder_path={files['text_encoder']}", f"model.vae_path={files['vae']}",
                   f"model.single_file_config={files['folder']}")
    assert "of VRAM at its peak" in out and "of system RAM" in out
    assert "transformer 3.88 B" in out and "Qwen3 4.02 B" in out
    assert "sizes of the real" not in out                      # every size read from the files' headers
    assert "transformer weights (fp8)" in out and "RAM:" in out


@SPARSE
def test_the_9b_dry_run_says_vram_and_ram_from_its_diffusers_folder(headers, tmp_path):
    out = _dry_run("presets/flux2-klein9b-lora-24gb.yaml", tmp_path, f"model.path={headers['9b']['folder']}")
    assert "transformer 9.08 B" in out and "Qwen3 8.19 B" in out and "sizes of the real" not in out
    assert "transformer weights (bf16, 28 of 32 blocks on the card)" in out and "of system RAM" in out
