"""FLUX.2 klein LoRA files in kohya format (BFL names under `lora_unet_`, each double block's qkv one block-diagonal
module: engine/models/families/flux2/lora_names.py) load in ComfyUI at the strength they were trained at, load in
diffusers' Flux2KleinPipeline with every module placed, and load back into adapters exactly.

ComfyUI is kept here as data: its Flux2 model's weight names (comfy/ldm/flux/model.py + layers.py with FLUX.2's
global modulation, SwiGLU MLPs and no biases) and the LoRA key map comfy/lora.py model_lora_keys_unet builds for a
`Flux2(Flux)` model: `lora_unet_` + every weight's path, the bare `diffusion_model.` paths, and the Flux branch's
diffusers names from comfy.utils.flux_to_diffusers (with row slices of the fused qkv)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.models.families.flux2 import bfl_names, lora_names
from engine.models.families.flux2.lora_names import ARCHITECTURE, BASE_MODEL_VERSION, IMPLEMENTATION, KOHYA_NAMING
from engine.models.lora import (LoraLoadError, add_lora, block_linear_targets, load_lora_into, lora_file_components,
                                lora_file_info, lora_layers)
from engine.models.lora_check import self_check
from engine.models.lora_export import LoraExportInfo, _kohya_tensors, save_lora

RANK, ALPHA = 4, 8  # alpha != rank: a lost or unscaled alpha shows as a different weight
DOUBLE = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
          "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
          "ff_context.linear_out")   # every Linear of a double block
SINGLE = ("attn.to_qkv_mlp_proj", "attn.to_out")   # every Linear of a single block
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.(.+)$")
INFO = LoraExportInfo(title="klein_lora", base_model_version=BASE_MODEL_VERSION["4b"], architecture=ARCHITECTURE["4b"],
                      prediction_type="", implementation=IMPLEMENTATION, text_encoder_names=("text_encoder",),
                      resolution_px=(1024, 1024), naming=KOHYA_NAMING)
# BFL's klein configs (transformer/config.json of FLUX.2-klein-base-4B / -9B); both: 128 channels in, heads of 128
KLEIN = {"4b": dict(num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680),
         "9b": dict(num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288)}


def klein(size):
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(in_channels=128, attention_head_dim=128, axes_dims_rope=(32, 32, 32, 32),
                                   mlp_ratio=3.0, guidance_embeds=False, **KLEIN[size])


def tiny():
    """Two blocks of each kind (block indices must map, not just block 0), width 32, MLP 96; seed 0."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    return Flux2Transformer2DModel(in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                   num_attention_heads=2, joint_attention_dim=24, timestep_guidance_channels=32,
                                   axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)


def pipeline(transformer):
    """Flux2KleinPipeline around `transformer`: loading a LoRA touches the transformer only (its only LoRA part)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                              transformer=transformer)


def targets(transformer, only=None) -> list[str]:
    wanted = {"transformer_blocks": DOUBLE, "single_transformer_blocks": SINGLE}
    return block_linear_targets(transformer, _BLOCK, wanted, only)


def base_weights(transformer) -> dict:
    """The transformer's own weights under diffusers' names (without peft's adapters and base_layer wrapping)."""
    return {k.replace(".base_layer.", "."): v for k, v in transformer.state_dict().items() if ".lora_" not in k}


def deltas(module) -> dict:
    return {p: l.scaling["default"] * l.lora_B["default"].weight @ l.lora_A["default"].weight
            for p, l in lora_layers(module).items()}


def assert_same_deltas(got: dict, want: dict):
    assert set(got) == set(want)
    for path, delta in want.items():
        torch.testing.assert_close(got[path], delta, rtol=1e-6, atol=1e-7, msg=path)


def out(transformer):
    """One forward on fixed inputs (16 image tokens, 8 text tokens, positions as the pipeline makes them)."""
    g = torch.Generator().manual_seed(0)
    cfg = transformer.config
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.), torch.arange(4.), torch.zeros(1),
                                         indexing="ij"), -1).reshape(-1, 4)
    txt_ids = torch.zeros(8, 4)
    txt_ids[:, 3] = torch.arange(8)
    with torch.no_grad():
        return transformer(hidden_states=torch.randn(1, 16, cfg.in_channels, generator=g),
                           encoder_hidden_states=torch.randn(1, 8, cfg.joint_attention_dim, generator=g),
                           timestep=torch.tensor([0.6]), img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------- ComfyUI as data

def comfy_native_weights(n_double: int, n_single: int) -> set:
    """The tensors of ComfyUI's Flux2 model (FluxParams global_modulation, mlp_silu_act, ops_bias False)."""
    names = ["img_in.weight", "txt_in.weight", "time_in.in_layer.weight", "time_in.out_layer.weight",
             "final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight",
             "double_stream_modulation_img.lin.weight", "double_stream_modulation_txt.lin.weight",
             "single_stream_modulation.lin.weight"]
    for i in range(n_double):
        for s in ("img", "txt"):
            names += [f"double_blocks.{i}.{s}_{p}" for p in ("attn.qkv.weight", "attn.proj.weight", "mlp.0.weight",
                                                            "mlp.2.weight", "attn.norm.query_norm.scale",
                                                            "attn.norm.key_norm.scale")]
    for i in range(n_single):
        names += [f"single_blocks.{i}.{p}" for p in ("linear1.weight", "linear2.weight", "norm.query_norm.scale",
                                                     "norm.key_norm.scale")]
    return {"diffusion_model." + n for n in names}


def comfy_key_map(n_double: int, n_single: int, hidden: int) -> dict:
    """ComfyUI's LoRA key map for a Flux2 model: {file module name: native weight, or (native weight, (dim, first
    row, rows)) for a row slice}."""
    key_map = {}
    for k in comfy_native_weights(n_double, n_single):  # any model: lora_unet_ + path with _, and the bare path
        if k.endswith(".weight"):
            stem = k[:-len(".weight")]
            key_map["lora_unet_" + stem[len("diffusion_model."):].replace(".", "_")] = k
            key_map[stem] = k
    by_path = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear"}
    by_path = {d: f"diffusion_model.{b}.weight" for d, b in by_path.items()}
    for i in range(n_double):  # flux_to_diffusers' double blocks: q/k/v as slices of qkv, FLUX.2's MLP names too
        native = f"diffusion_model.double_blocks.{i}"
        for s, parts in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for n, part in enumerate(parts):
                qkv = f"{native}.{s}_attn.qkv.weight"
                by_path[f"transformer_blocks.{i}.attn.{part}"] = (qkv, (0, n * hidden, hidden))
        for d, b in (("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"),
                     ("ff.linear_in", "img_mlp.0"), ("ff.linear_out", "img_mlp.2"),
                     ("ff_context.linear_in", "txt_mlp.0"), ("ff_context.linear_out", "txt_mlp.2")):
            by_path[f"transformer_blocks.{i}.{d}"] = f"{native}.{b}.weight"
    for i in range(n_single):  # "# Flux 2" rows: the fused projections whole
        native = f"diffusion_model.single_blocks.{i}"
        by_path[f"single_transformer_blocks.{i}.attn.to_qkv_mlp_proj"] = f"{native}.linear1.weight"
        by_path[f"single_transformer_blocks.{i}.attn.to_out"] = f"{native}.linear2.weight"
        key_map[f"{native}.linear1_qkv"] = (f"{native}.linear1.weight", (0, 0, 3 * hidden))
    for path, to in by_path.items():
        flat = path.replace(".", "_")
        for name in (f"transformer.{path}", f"lycoris_{flat}", f"lora_transformer_{flat}", path):
            key_map[name] = to
    return key_map


def apply_as_comfyui(native: dict, tensors: dict, key_map: dict) -> None:
    """ComfyUI's LoRA patch: weight (or its row slice) += alpha / rank * up @ down, alpha read from `<name>.alpha`
    (1 per rank when absent)."""
    for key in tensors:
        if key.endswith(".lora_down.weight") or key.endswith(".lora_A.weight"):
            stem, kind = key.rsplit(".", 2)[0], "kohya" if key.endswith(".lora_down.weight") else "peft"
            down = tensors[key]
            up = tensors[f"{stem}.lora_up.weight" if kind == "kohya" else f"{stem}.lora_B.weight"]
            alpha = float(tensors[f"{stem}.alpha"]) if f"{stem}.alpha" in tensors else down.shape[0]
            target, delta = key_map[stem], alpha / down.shape[0] * up @ down
            weight, (dim, first, rows) = target if isinstance(target, tuple) else (target, (0, 0, delta.shape[0]))
            native[weight].narrow(dim, first, rows).add_(delta)


# ---------------------------------------------------------------------------------------------- the files

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny klein with LoRA on every block linear, random lora_B (so every module changes the model), and its
    kohya and diffusers files."""
    tr = tiny()
    add_lora(tr, RANK, ALPHA, 0.0, targets(tr))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(tr).values():
            layer.lora_B["default"].weight.normal_(0, 0.05, generator=g)
    folder = tmp_path_factory.mktemp("flux2 lora")
    files = {fmt: save_lora(folder / f"{fmt}.safetensors", fmt, tr, {}, INFO, dtype=torch.float32)
             for fmt in ("kohya", "diffusers")}
    return {"transformer": tr, "files": files, "n_layers": len(lora_layers(tr))}


def stems(path) -> set:
    return {k.rsplit(".", 2)[0] for k in load_file(str(path)) if k.endswith((".lora_down.weight", ".lora_A.weight"))}


def test_every_module_name_is_in_comfyuis_flux2_map_whole(trained):
    """kohya names map to whole native weights (ComfyUI's loop for any model), so alpha / rank scales each fused
    qkv as one; 2 x 8 double-block and 2 x 2 single-block modules stand for all 28 layers."""
    tr = trained["transformer"]
    key_map = comfy_key_map(2, 2, 32)
    names = stems(trained["files"]["kohya"])
    assert sorted(n for n in names if not isinstance(key_map.get(n), str)) == []
    assert len(names) == 2 * 8 + 2 * 2 and sum(lora_names.fused_size(n) for n in names) == trained["n_layers"] == 28
    assert {"lora_unet_double_blocks_1_txt_attn_qkv", "lora_unet_double_blocks_0_img_mlp_2",
            "lora_unet_single_blocks_1_linear2"} <= names
    tensors = load_file(str(trained["files"]["kohya"]))
    assert {float(tensors[f"{n}.alpha"]) for n in names} == {ALPHA, 3 * ALPHA}  # a qkv: rank 12, alpha 24
    # the trap of musubi-tuner#905: BFL's dots inside a module name must become underscores too
    assert not any("img_attn.proj" in n for n in names) and "lora_unet_double_blocks_0_img_attn_proj" in names
    # ComfyUI maps the 'diffusers' file's names too (FLUX.2's rows of flux_to_diffusers), but reads no alpha there
    assert sorted(n for n in stems(trained["files"]["diffusers"]) if n not in key_map) == []
    assert set(bfl_names.diffusers_to_bfl(base_weights(tr))) == {k[len("diffusion_model."):] for k in
                                                                comfy_native_weights(2, 2)}


@pytest.mark.parametrize("fmt,strength", [("kohya", 1.0), ("diffusers", RANK / ALPHA)])
def test_applied_as_comfyui_applies_it_the_file_gives_the_trained_weights(trained, fmt, strength):
    """Onto BFL-layout weights and converted back: base + alpha / r * B A for every layer. The kohya file at
    strength 1; the diffusers file, whose alpha ComfyUI does not read, at rank / alpha only."""
    tr = trained["transformer"]
    native = {f"diffusion_model.{k}": v.clone() for k, v in bfl_names.diffusers_to_bfl(base_weights(tr)).items()}
    apply_as_comfyui(native, load_file(str(trained["files"][fmt])), comfy_key_map(2, 2, 32))
    applied, want = bfl_names.bfl_to_diffusers(native), base_weights(tr)
    assert set(applied) == set(want)
    for path, delta in deltas(tr).items():
        want[f"{path}.weight"] = want[f"{path}.weight"] + delta * strength
    for key, value in want.items():
        torch.testing.assert_close(applied[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_diffusers_loads_every_module_and_renders_as_trained(trained, fmt):
    pipe = pipeline(tiny())
    report = self_check(trained["files"][fmt], pipe, naming=KOHYA_NAMING)
    assert report.modules_loaded == report.layers_expected == trained["n_layers"]
    if fmt == "kohya":
        assert report.modules_in_file == trained["n_layers"] - 2 * 2 * 2  # each qkv module holds three layers
    base = out(pipe.transformer)
    pipe.load_lora_weights(str(trained["files"][fmt]))
    want = out(trained["transformer"])
    assert (want - base).abs().max() > 1e-3  # the LoRA does something...
    torch.testing.assert_close(out(pipe.transformer), want, rtol=1e-5, atol=1e-5)  # ...what it did in training


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_easel_reads_it_back_exactly(trained, fmt):
    path = trained["files"][fmt]
    info = lora_file_info(path)
    assert (info.rank, info.alpha) == (RANK, ALPHA)
    assert lora_file_components(path) == {"transformer"}
    fresh = tiny()
    add_lora(fresh, info.rank, 1.0, 0.0, targets(fresh))  # another alpha: lora_up is rescaled to the file's
    assert load_lora_into(fresh, {}, path, naming=KOHYA_NAMING) == trained["n_layers"]
    assert_same_deltas(deltas(fresh), deltas(trained["transformer"]))


def test_metadata_is_what_musubi_tuner_writes_for_klein(trained):
    with safe_open(str(trained["files"]["kohya"]), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "flux_2_klein_4b"
    assert meta["modelspec.architecture"] == "Flux.2-klein-4b/lora"
    assert meta["modelspec.implementation"] == "https://github.com/black-forest-labs/flux2"
    assert meta["ss_network_module"] == "networks.lora_flux_2"
    assert "modelspec.prediction_type" not in meta
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == (str(RANK), str(ALPHA))


# ---------------------------------------------------------------------------------------------- other layouts

@pytest.mark.parametrize("only", [("to_q", "to_k"), ("to_out.0", "attn.to_out")], ids=["qk", "out-projections"])
def test_subsets_export_and_reload_exactly(tmp_path, only):
    """Two of three qkv parts: v is a zero block, which diffusers places as a layer of its own. The attention
    out-projections alone: the double blocks' attn.to_out.0 and the single blocks' attn.to_out (linear2, also the
    MLP's out-projection: unsloth PR #8267's single-stream out-projections)."""
    tr = tiny()
    add_lora(tr, RANK, ALPHA, 0.0, targets(tr, only))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lora_layers(tr).values():
            layer.lora_B["default"].weight.normal_(0, 0.05, generator=g)
    path = save_lora(tmp_path / "s.safetensors", "kohya", tr, {}, INFO, dtype=torch.float32)
    fresh = tiny()
    add_lora(fresh, RANK, ALPHA, 0.0, targets(fresh, only))
    assert load_lora_into(fresh, {}, path, naming=KOHYA_NAMING) == len(lora_layers(tr))
    assert_same_deltas(deltas(fresh), deltas(tr))
    report = self_check(path, pipeline(tiny()), naming=KOHYA_NAMING)
    assert report.modules_loaded == report.layers_expected == sum(lora_names.fused_size(s) for s in stems(path))
    if only != ("to_q", "to_k"):
        assert stems(path) == {f"lora_unet_{b}_{i}_{m}" for i in (0, 1)
                               for b, m in (("double_blocks", "img_attn_proj"), ("single_blocks", "linear2"))}


def test_musubi_dense_qkv_file_loads_exactly(tmp_path):
    """musubi-tuner's (and sd-scripts') default: one down shared by q, k and v, a tall up. Rank 6 divides by 3, so a
    loader that guessed "block-diagonal" from the rank alone would cut the down apart."""
    rank, alpha = 6, 3.0
    tr, g = tiny(), torch.Generator().manual_seed(3)
    tensors, want = {}, {}
    for name, paths in lora_names.modules(tr).items():
        if len(paths) == 3:
            down, up = torch.randn(rank, 32, generator=g), torch.randn(96, rank, generator=g) * 0.05
            tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                            f"{name}.alpha": torch.tensor(alpha)})
            want.update({p: rows @ down * (alpha / rank) for p, rows in zip(paths, up.split(32))})
    save_file(tensors, str(tmp_path / "dense.safetensors"), metadata={"ss_network_module": "networks.lora_flux_2"})
    info = lora_file_info(tmp_path / "dense.safetensors")
    assert (info.rank, info.alpha) == (rank, alpha)
    add_lora(tr, info.rank, 1.0, 0.0, list(want))
    assert load_lora_into(tr, {}, tmp_path / "dense.safetensors", naming=KOHYA_NAMING) == len(want) == 12
    assert_same_deltas(deltas(tr), want)
    self_check(tmp_path / "dense.safetensors", pipeline(tiny()), naming=KOHYA_NAMING)


@pytest.mark.parametrize("outside", ["double_stream_modulation_img.linear", "x_embedder"])
def test_kohya_refuses_layers_outside_the_blocks(tmp_path, outside):
    tr = tiny()
    add_lora(tr, RANK, ALPHA, 0.0, [outside, "transformer_blocks.0.attn.to_q"])
    with pytest.raises(ValueError, match=rf"blocks' layers only .*{outside}.*use format 'diffusers'"):
        save_lora(tmp_path / "x.safetensors", "kohya", tr, {}, INFO)
    save_lora(tmp_path / "x.safetensors", "diffusers", tr, {}, INFO)


def test_the_registry_gives_flux2_transformers_this_naming_and_flux1_keeps_its_own():
    from diffusers import FluxTransformer2DModel

    from engine.models.families import get_family
    from engine.models.lora_naming import naming_of

    with torch.device("meta"):
        flux1 = FluxTransformer2DModel(num_layers=1, num_single_layers=1)
    assert naming_of(tiny()) is KOHYA_NAMING is get_family("flux2").kohya_naming
    assert naming_of(flux1) is get_family("flux").kohya_naming is not KOHYA_NAMING


# ---------------------------------------------------------------------------------------------- at klein's size

@pytest.mark.parametrize("size", ["4b", "9b"])
def test_real_size_klein_writes_musubis_module_set_in_comfyuis_map(size):
    """On the meta device: every block linear is musubi-tuner's default set (its Linear modules of DoubleStreamBlock
    and SingleStreamBlock: 8 per double block, 2 per single block), each one ComfyUI maps to a whole weight."""
    with torch.device("meta"):
        tr = klein(size)
        add_lora(tr, RANK, ALPHA, 0.0, targets(tr))
        tensors, header = _kohya_tensors({"transformer": tr}, INFO, "default")
    cfg, hidden = KLEIN[size], 128 * KLEIN[size]["num_attention_heads"]
    names = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}
    musubi = {f"lora_unet_double_blocks_{i}_{s}_{m}" for i in range(cfg["num_layers"]) for s in ("img", "txt")
              for m in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2")}
    musubi |= {f"lora_unet_single_blocks_{i}_{m}" for i in range(cfg["num_single_layers"])
               for m in ("linear1", "linear2")}
    assert names == musubi
    key_map = comfy_key_map(cfg["num_layers"], cfg["num_single_layers"], hidden)
    assert all(isinstance(key_map.get(n), str) for n in names)
    assert tuple(tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape) == (3 * hidden, 3 * RANK)
    assert tuple(tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape) == (3 * hidden + 6 * hidden, RANK)
    assert header["ss_network_module"] == "networks.lora_flux_2"
    assert lora_names.size_of(tr) == size


def test_bfl_map_is_diffusers_converter_at_klein_width_and_on_values():
    """Our BFL <-> diffusers table against diffusers' own converter: at klein 4B's full width on the meta device
    (names and shapes), and on the tiny model's values (q/k/v order, the final adaLN's swapped halves)."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers as convert

    with torch.device("meta"):
        state = klein("4b").state_dict()
    bfl = bfl_names.diffusers_to_bfl(state)
    assert {f"diffusion_model.{k}" for k in bfl} == comfy_native_weights(5, 20)
    for converted in (convert(dict(bfl)), bfl_names.bfl_to_diffusers(bfl)):
        assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in state.items()}
    state = tiny().state_dict()
    bfl = {f"model.diffusion_model.{k}": v for k, v in bfl_names.diffusers_to_bfl(state).items()}
    for converted in (convert({k.removeprefix("model.diffusion_model."): v for k, v in bfl.items()}),
                      bfl_names.bfl_to_diffusers(bfl)):
        assert set(converted) == set(state) and all(torch.equal(converted[k], v) for k, v in state.items())
    assert bfl_names.layout_of(bfl) == "bfl" and bfl_names.layout_of(state) == "diffusers"
    assert bfl_names.layout_of(["double_blocks.0.img_attn.qkv.weight"]) is None  # FLUX.1


def test_a_broken_module_is_named(trained, tmp_path):
    tensors = load_file(str(trained["files"]["kohya"]))
    renamed = {k.replace("_0_img_attn_proj.", "_0_img_attn_projx."): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(LoraLoadError, match="img_attn_projx"):  # diffusers leaves it out: the check says so
        self_check(tmp_path / "renamed.safetensors", pipeline(tiny()), naming=KOHYA_NAMING)
    short = dict(tensors)
    key = "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"
    short[key] = short[key][:-1]  # one row short of q, k, v
    save_file(short, str(tmp_path / "short.safetensors"))
    fresh = tiny()
    add_lora(fresh, RANK, ALPHA, 0.0, targets(fresh))
    with pytest.raises(LoraLoadError, match="img_attn_qkv"):
        load_lora_into(fresh, {}, tmp_path / "short.safetensors", naming=KOHYA_NAMING)
    assert lora_names.unplaced(short, fresh) == ["lora_unet_double_blocks_0_img_attn_qkv"]
