"""FLUX.1 LoRA files in kohya format (BFL names, fused q/k/v: engine/models/lora_names.py) load everywhere exactly as
trained, and load back into adapters exactly: names against ComfyUI's and sd-scripts' rules (tests/lora_name_rules.py),
numbers through diffusers' own kohya converter, and round trips through load_lora_into.

The tiny FLUX is too narrow for diffusers 0.42's converter to split single-block linear1 (it hard-codes FLUX.1's
widths), so linear1 goes through diffusers on a one-single-block FLUX at FLUX.1's real width.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.models.families.flux import lora_names
from engine.models.families.flux.record import KOHYA_NAMING as FLUX_NAMING
from engine.models.lora import (add_lora, load_lora_into, lora_file_components, lora_file_info, lora_layers,
                                LoraLoadError)
from engine.models.lora_check import self_check
from engine.models.lora_export import LoraExportInfo, save_lora
from engine.models.families.flux.record import DOUBLE_BLOCK_LINEARS, MODULATION_LINEARS, SINGLE_BLOCK_LINEARS
from lora_name_rules import (COMFY_FLUX, SD_SCRIPTS_FLUX, SD_SCRIPTS_FLUX_DEFAULT_COUNTS, diffusers_flux_layers,
                             matches_any)

RANK, ALPHA = 4, 8  # alpha != rank: a lost or unscaled alpha shows as a different output
# the trainer's default targets (engine/models/families/flux/record.py)
DOUBLE, SINGLE, MODULATION = DOUBLE_BLOCK_LINEARS, SINGLE_BLOCK_LINEARS, MODULATION_LINEARS
LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
CLIP = ["q_proj", "k_proj", "v_proj", "out_proj"]
INFO = LoraExportInfo(title="flux_lora", base_model_version=lora_names.BASE_MODEL_VERSION,
                      architecture=lora_names.ARCHITECTURE["dev"], prediction_type="",
                      implementation=lora_names.IMPLEMENTATION, text_encoder_names=("text_encoder", "text_encoder_2"),
                      resolution_px=(1024, 1024), naming=FLUX_NAMING)


def targets(transformer, single_without=(), only=None) -> list[str]:
    """Full module paths as the trainer passes them: the block linears and modulation (but `single_without`), or
    only the `only` suffixes."""
    wanted = {"transformer_blocks": DOUBLE + MODULATION["transformer_blocks"],
              "single_transformer_blocks": tuple(s for s in SINGLE + MODULATION["single_transformer_blocks"]
                                                 if s not in single_without)}
    names = []
    for name, module in transformer.named_modules():
        m = re.match(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.(.+)$", name)
        if not m or not isinstance(module, torch.nn.Linear):
            continue
        if (m[2] in wanted[m[1]]) if only is None else any(m[2].endswith(s) for s in only):
            names.append(name)
    return names


@pytest.fixture(scope="module")
def folder(tiny_model):
    return tiny_model("flux")


def fresh(folder, **components):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def randomize(*modules, seed=1):
    """lora_B starts at zero; a trained LoRA's is not."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for layer in lora_layers(module).values():
                layer.lora_B["default"].weight.normal_(0, 0.05, generator=g)


def trained(folder, paths=None, clip=True, **components):
    pipe = fresh(folder, **components)
    add_lora(pipe.transformer, RANK, ALPHA, 0.0, paths or targets(pipe.transformer))
    tes = {"text_encoder": pipe.text_encoder} if clip else {}
    if clip:
        add_lora(pipe.text_encoder, RANK, ALPHA, 0.0, CLIP)
    randomize(pipe.transformer, *tes.values())
    return pipe, tes


def transformer_out(transformer):
    """One forward of the transformer on fixed random inputs (16 image tokens, 8 text tokens)."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(0)
    cfg = transformer.config
    x = torch.randn(1, 16, cfg.in_channels, generator=g)
    text = torch.randn(1, 8, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    guidance = torch.tensor([3.5]) if cfg.guidance_embeds else None
    with torch.no_grad():
        return transformer(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
                           timestep=torch.tensor([0.6]), guidance=guidance,
                           img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32),
                           txt_ids=torch.zeros(8, 3), return_dict=False)[0]


def render(pipe):
    return pipe("the cat", num_inference_steps=2, height=64, width=64, output_type="np", max_sequence_length=16,
                generator=torch.Generator().manual_seed(0)).images[0]


def deltas(module, adapter="default") -> dict[str, torch.Tensor]:
    """{layer path: the weight change its adapter makes}."""
    return {p: (l.lora_B[adapter].weight @ l.lora_A[adapter].weight) * l.scaling[adapter]
            for p, l in lora_layers(module, adapter).items()}


def assert_same_deltas(got: dict, want: dict):
    assert set(got) == set(want)
    for path, delta in want.items():
        torch.testing.assert_close(got[path], delta, rtol=1e-6, atol=1e-7, msg=path)


def n_layers(pipe) -> int:
    return len(lora_layers(pipe.transformer)) + len(lora_layers(pipe.text_encoder))


def stems(path) -> list[str]:
    """The file's module names."""
    return sorted({k.split(".", 1)[0] for k in load_file(str(path))})


@pytest.fixture(scope="module")
def exported(folder, tmp_path_factory):
    """Default targets + modulation + CLIP-L, written as kohya (fp16 and fp32) and diffusers."""
    out = tmp_path_factory.mktemp("flux_lora")
    pipe, tes = trained(folder)
    fp32 = {"dtype": torch.float32}
    files = {"kohya": save_lora(out / "k.safetensors", "kohya", pipe.transformer, tes, INFO),
             "kohya_fp32": save_lora(out / "k32.safetensors", "kohya", pipe.transformer, tes, INFO, **fp32),
             "diffusers": save_lora(out / "d.safetensors", "diffusers", pipe.transformer, tes, INFO, **fp32)}
    return {"pipe": pipe, "tes": tes, "files": files, "n_layers": n_layers(pipe)}


# ---------------------------------------------------------------------------------------------- (a) names

def test_kohya_names_are_comfyuis_and_sd_scripts(exported):
    modules = stems(exported["files"]["kohya"])
    assert not [n for n in modules if not matches_any(n, COMFY_FLUX)]
    assert not [n for n in modules if not matches_any(n, SD_SCRIPTS_FLUX)]  # sd-scripts: lora_te1 for CLIP-L
    assert "lora_unet_double_blocks_0_img_attn_qkv" in modules and "lora_unet_single_blocks_0_linear1" in modules
    # every trained layer is in the file once: fused modules stand for 3 (qkv) or 4 (linear1) layers
    assert sum(diffusers_flux_layers(n) for n in modules) == exported["n_layers"]
    tensors = load_file(str(exported["files"]["kohya"]))
    assert {float(tensors[f"{n}.alpha"]) for n in modules} == {ALPHA * diffusers_flux_layers(n) for n in modules}


def test_real_size_flux_writes_sd_scripts_default_set():
    """FLUX.1 at full size (meta device): every block linear with modulation, and CLIP-L's attention and MLP, is the
    set sd-scripts trains by default, module for module."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.lora_export import _kohya_tensors

    with torch.device("meta"):
        transformer = FluxTransformer2DModel()  # FLUX.1's config: 19 double, 38 single blocks, width 3072
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                            intermediate_size=3072))
        add_lora(transformer, RANK, ALPHA, 0.0, targets(transformer))
        add_lora(clip, RANK, ALPHA, 0.0, CLIP + ["fc1", "fc2"])
        tensors, header = _kohya_tensors({"transformer": transformer, "text_encoder": clip}, INFO, "default")
    names = sorted({k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")})
    unet, te = [n for n in names if n.startswith("lora_unet")], [n for n in names if n.startswith("lora_te")]
    assert (len(unet), len(te)) == SD_SCRIPTS_FLUX_DEFAULT_COUNTS
    assert not [n for n in names if not matches_any(n, SD_SCRIPTS_FLUX) or not matches_any(n, COMFY_FLUX)]
    assert tuple(tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape) == (3 * 3072 + 12288, 4 * RANK)
    assert header["ss_network_module"] == lora_names.NETWORK_MODULE


def test_metadata_is_what_sd_scripts_writes_for_flux(exported):
    with safe_open(str(exported["files"]["kohya"]), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert "modelspec.prediction_type" not in meta  # sd-scripts writes none for FLUX
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == (str(RANK), str(ALPHA))


# ---------------------------------------------------------------------------------------------- (b) diffusers

def test_kohya_file_renders_in_diffusers_as_trained(folder, tmp_path):
    """Everything but single-block linear1 (see the module docstring): same transformer output, same image."""
    pipe, tes = trained(folder, paths=targets(fresh(folder).transformer, single_without=LINEAR1))
    path = save_lora(tmp_path / "k.safetensors", "kohya", pipe.transformer, tes, INFO, dtype=torch.float32)
    want_out, want_image = transformer_out(pipe.transformer), render(pipe)
    base = fresh(folder)
    base_image = render(base)
    report = self_check(path, base)
    assert report.modules_loaded == report.layers_expected == n_layers(pipe)
    assert report.modules_in_file < report.layers_expected  # the qkv modules count three layers each
    base.load_lora_weights(str(path))
    torch.testing.assert_close(transformer_out(base.transformer), want_out, rtol=1e-5, atol=1e-5)
    assert np.abs(render(base) - base_image).max() > 0.05  # the LoRA does something...
    assert np.abs(render(base) - want_image).max() < 1e-5  # ...exactly what it did in training


def test_diffusers_file_renders_in_diffusers_as_trained(folder, exported):
    pipe = fresh(folder)
    report = self_check(exported["files"]["diffusers"], pipe)
    assert report.modules_loaded == report.layers_expected == exported["n_layers"]
    pipe.load_lora_weights(str(exported["files"]["diffusers"]))
    torch.testing.assert_close(transformer_out(pipe.transformer), transformer_out(exported["pipe"].transformer),
                               rtol=1e-5, atol=1e-5)
    assert np.abs(render(pipe) - render(exported["pipe"])).max() < 1e-5


def wide_transformer():
    """One single block at FLUX.1's width (24 heads of 128: 3072; MLP 12288), about 180M parameters."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=0, num_single_layers=1,
                                  attention_head_dim=128, num_attention_heads=24, joint_attention_dim=32,
                                  pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(16, 56, 56))


@pytest.mark.parametrize("only", [None, ("attn.to_q", "attn.to_k", "attn.to_v")], ids=["all", "qkv-only"])
def test_single_block_linear1_loads_in_diffusers_at_flux1_width(folder, tmp_path, only):
    transformer = wide_transformer()
    pipe = fresh(folder, transformer=transformer)
    paths = targets(transformer, only=only)
    add_lora(transformer, RANK, ALPHA, 0.0, paths)
    randomize(transformer)
    path = save_lora(tmp_path / "k.safetensors", "kohya", transformer, {}, INFO, dtype=torch.float32)
    want = transformer_out(transformer)
    transformer.delete_adapters("default")
    report = self_check(path, pipe)  # all through diffusers: no shape-only check at this width
    assert report.modules_loaded == report.layers_expected == 4 + (0 if only else 2)
    assert not [w for w in report.warnings if "checked by shape" in w]
    pipe.load_lora_weights(str(path))
    torch.testing.assert_close(transformer_out(transformer), want, rtol=1e-5, atol=1e-5)


def test_self_check_passes_on_the_tiny_flux_and_names_a_broken_module(folder, exported, tmp_path):
    report = self_check(exported["files"]["kohya"], fresh(folder))  # linear1 checked by shape at this width
    assert report.modules_loaded == report.layers_expected == exported["n_layers"]
    trainer = exported["pipe"]  # on the training pipeline itself: its adapters stay as they were
    before = transformer_out(trainer.transformer)
    self_check(exported["files"]["kohya"], trainer)
    assert trainer.transformer.active_adapters() == ["default"] == trainer.text_encoder.active_adapters()
    assert torch.equal(transformer_out(trainer.transformer), before)
    tensors = load_file(str(exported["files"]["kohya"]))
    for broken, edit in (("img_attn_projx", lambda k, v: (k.replace("img_attn_proj.", "img_attn_projx."), v)),
                         ("linear1", lambda k, v: (k, v[:-1] if k.endswith("linear1.lora_up.weight") else v))):
        save_file(dict(edit(k, v) for k, v in tensors.items()), str(tmp_path / "bad.safetensors"))
        with pytest.raises(LoraLoadError, match=broken):
            self_check(tmp_path / "bad.safetensors", fresh(folder))


# ---------------------------------------------------------------------------------------------- (c) round trip

@pytest.mark.parametrize("fmt", ["kohya_fp32", "diffusers"])
def test_load_lora_into_is_exact(folder, exported, fmt):
    path = exported["files"][fmt]
    info = lora_file_info(path)
    assert (info.rank, info.alpha) == (RANK, ALPHA)  # the fused modules' rank 12/16 is per part 4
    assert lora_file_components(path) == {"transformer", "text_encoder"}
    pipe = fresh(folder)
    add_lora(pipe.transformer, info.rank, 1.0, 0.0, targets(pipe.transformer))  # another alpha: lora_up rescaled
    add_lora(pipe.text_encoder, info.rank, 1.0, 0.0, CLIP)
    assert load_lora_into(pipe.transformer, {"text_encoder": pipe.text_encoder}, path) == exported["n_layers"]
    assert_same_deltas(deltas(pipe.transformer), deltas(exported["pipe"].transformer))
    assert_same_deltas(deltas(pipe.text_encoder), deltas(exported["pipe"].text_encoder))


def test_fp16_kohya_file_reproduces_the_model(folder, exported):
    pipe = fresh(folder)
    add_lora(pipe.transformer, RANK, ALPHA, 0.0, targets(pipe.transformer))
    add_lora(pipe.text_encoder, RANK, ALPHA, 0.0, CLIP)
    load_lora_into(pipe.transformer, {"text_encoder": pipe.text_encoder}, exported["files"]["kohya"])
    assert np.abs(render(pipe) - render(exported["pipe"])).max() < 5e-3  # fp16 rounding only


# ---------------------------------------------------------------------------------------------- (d) dense fused

def test_sd_scripts_dense_fused_file_loads_exactly(folder, tmp_path):
    """sd-scripts' default: one down (r, in) shared by q, k, v (and linear1's MLP), a tall up. Rank 12 divides by 3
    and 4, so a loader that guessed "block-diagonal" from the rank alone would cut the down apart. Only the fused
    modules are written, so the file's rank must be read from them."""
    rank, alpha = 12, 6.0
    transformer = fresh(folder).transformer
    g = torch.Generator().manual_seed(2)
    tensors, want = {}, {}
    for name, paths in lora_names.modules(transformer).items():
        if len(paths) == 1:
            continue
        widths = [lora_names.out_features(transformer, p) for p in paths]
        down = torch.randn(rank, transformer.get_submodule(paths[0]).in_features, generator=g)
        up = torch.randn(sum(widths), rank, generator=g) * 0.05
        tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(alpha)})
        for p, rows in zip(paths, torch.split(up, widths)):
            want[p] = rows @ down * (alpha / rank)  # the closed form every loader computes
    save_file(tensors, str(tmp_path / "dense.safetensors"), metadata={"ss_network_module": "networks.lora_flux"})
    info = lora_file_info(tmp_path / "dense.safetensors")
    assert (info.rank, info.alpha) == (rank, alpha)
    pipe = fresh(folder)
    add_lora(pipe.transformer, info.rank, 3.0, 0.0, list(want))
    assert load_lora_into(pipe.transformer, {}, tmp_path / "dense.safetensors") == len(want) == 3 + 3 + 4
    assert_same_deltas(deltas(pipe.transformer), want)
    self_check(tmp_path / "dense.safetensors", fresh(folder))  # diffusers places the dense layout too


# ---------------------------------------------------------------------------------------------- (e) CLIP-L part

def test_clip_l_part_loads_alone_and_round_trips(folder, exported):
    path = exported["files"]["kohya"]
    assert all(n.startswith("lora_te1_text_model_encoder_layers_") for n in stems(path) if n.startswith("lora_te"))
    pipe = fresh(folder)  # phase 2 of a two-phase run: a frozen CLIP-L adapter from phase 1's file
    add_lora(pipe.transformer, RANK, ALPHA, 0.0, targets(pipe.transformer))
    add_lora(pipe.text_encoder, RANK, ALPHA, 0.0, CLIP)
    loaded = load_lora_into(pipe.transformer, {"text_encoder": pipe.text_encoder}, path, components={"text_encoder"})
    assert loaded == len(lora_layers(pipe.text_encoder))
    assert not any(d.any() for d in deltas(pipe.transformer).values())  # the transformer's part was left out
    torch.testing.assert_close(deltas(pipe.text_encoder), deltas(exported["pipe"].text_encoder), rtol=2e-3, atol=1e-4)

    other = fresh(folder)  # without the transformer at all
    add_lora(other.text_encoder, RANK, 1.0, 0.0, CLIP)
    assert load_lora_into(None, {"text_encoder": other.text_encoder}, exported["files"]["kohya_fp32"],
                          components={"text_encoder"}) == len(lora_layers(other.text_encoder))
    assert_same_deltas(deltas(other.text_encoder), deltas(exported["pipe"].text_encoder))
    with pytest.raises(LoraLoadError, match="lora_unet_double_blocks_0"):  # without components, everything must load
        load_lora_into(None, {"text_encoder": other.text_encoder}, exported["files"]["kohya_fp32"])


# ---------------------------------------------------------------------------------------------- (f) subsets

@pytest.mark.parametrize("only", [("attn.to_q", "attn.to_k", "attn.to_v"), ("attn.to_q", "attn.to_k")],
                         ids=["qkv", "qk"])
def test_attention_subset_exports_and_reloads_exactly(folder, tmp_path, only):
    pipe, _ = trained(folder, paths=targets(fresh(folder).transformer, only=only), clip=False)
    path = save_lora(tmp_path / "s.safetensors", "kohya", pipe.transformer, {}, INFO, dtype=torch.float32)
    # the text stream's add_*_proj are not attn.to_*
    assert stems(path) == ["lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"]
    tensors = load_file(str(path))
    up = tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert not up[3 * 32:].any() and up[:32, :RANK].any()  # the untrained MLP (and v) parts are zero blocks
    assert lora_file_info(path).rank == RANK

    again = fresh(folder)
    add_lora(again.transformer, RANK, ALPHA, 0.0, targets(again.transformer, only=only))
    assert load_lora_into(again.transformer, {}, path) == len(lora_layers(pipe.transformer))
    assert_same_deltas(deltas(again.transformer), deltas(pipe.transformer))
    report = self_check(path, fresh(folder))  # diffusers gives the untrained parts layers of their own (zero)
    assert report.modules_loaded == report.layers_expected == 3 + 4

    fewer = fresh(folder)  # a file that changes a layer the adapters lack does not load silently
    add_lora(fewer.transformer, RANK, ALPHA, 0.0, targets(fewer.transformer, only=("attn.to_q",)))
    with pytest.raises(LoraLoadError, match=r"img_attn_qkv.*attn\.to_k"):
        load_lora_into(fewer.transformer, {}, path)


@pytest.mark.parametrize("path", ["x_embedder", "proj_out"])
def test_kohya_refuses_layers_outside_the_blocks(folder, tmp_path, path):
    """diffusers drops the embedders' and final layer's modules of kohya FLUX files: a clear refusal instead."""
    pipe, _ = trained(folder, paths=[path, "transformer_blocks.0.attn.to_q"], clip=False)
    with pytest.raises(ValueError, match=rf"blocks' layers only .*{path}.*use format 'diffusers'"):
        save_lora(tmp_path / "x.safetensors", "kohya", pipe.transformer, {}, INFO)
    save_lora(tmp_path / "x.safetensors", "diffusers", pipe.transformer, {}, INFO)
