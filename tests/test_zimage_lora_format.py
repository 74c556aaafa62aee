"""Z-Image LoRA files load in ComfyUI at the strength they were trained at: every module name is one ComfyUI's
Z-Image key map has (kept here as data, fused-qkv row slices included, as comfy/lora.py model_lora_keys_unet builds it
for Lumina2 / Z-Image from comfy.utils.z_image_to_diffusers), and applying the file the way ComfyUI does, onto the
original layout's fused weights, gives exactly the weights the run trained. The year's top complaint (ComfyUI#11487,
musubi-tuner#807, ai-toolkit#538) was files with sd-scripts-style flat names that ComfyUI's map does not have."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file

from engine.config.schema import NetworkConfig
from engine.models.families.zimage.names import diffusers_to_original, original_to_diffusers
from engine.models.families.zimage.record import ARCHITECTURE, IMPLEMENTATION, KOHYA_NAMING, lora_target_names
from engine.models.lora import add_lora, load_lora_into, lora_file_info, lora_layers
from engine.models.lora_check import self_check
from engine.models.lora_export import LoraExportInfo, save_lora

RANK, ALPHA = 4, 8  # alpha != rank: a lost or unscaled alpha shows as a different weight
INFO = LoraExportInfo(title="zimage_lora", base_model_version="z_image", architecture=ARCHITECTURE["base"],
                      prediction_type="", implementation=IMPLEMENTATION, text_encoder_names=("text_encoder",),
                      resolution_px=(1024, 1024), naming=KOHYA_NAMING)


def comfy_zimage_key_map(n_layers: int, n_refiner: int, dim: int) -> dict:
    """ComfyUI's LoRA key map for a Z-Image model: {file module name: native weight, or (native weight, (dim,
    first row, rows)) for a slice of the fused qkv}. Its four prefixes (`diffusion_model.`, `transformer.`,
    `lycoris_` with underscores, bare) over diffusers' module paths, plus every native weight under `lora_unet_` with
    underscores and as its bare `diffusion_model.` path."""
    by_path = {}
    blocks = [("layers", n_layers, True), ("noise_refiner", n_refiner, True), ("context_refiner", n_refiner, False)]
    for kind, count, adaln in blocks:
        for i in range(count):
            block, native = f"{kind}.{i}", f"diffusion_model.{kind}.{i}"
            qkv = f"{native}.attention.qkv.weight"
            by_path[f"{block}.attention.to_q"] = (qkv, (0, 0, dim))
            by_path[f"{block}.attention.to_k"] = (qkv, (0, dim, dim))
            by_path[f"{block}.attention.to_v"] = (qkv, (0, 2 * dim, dim))
            by_path[f"{block}.attention.to_out.0"] = f"{native}.attention.out.weight"
            for w in ("w1", "w2", "w3"):
                by_path[f"{block}.feed_forward.{w}"] = f"{native}.feed_forward.{w}.weight"
            if adaln:
                by_path[f"{block}.adaLN_modulation.0"] = f"{native}.adaLN_modulation.0.weight"
    by_path["all_x_embedder.2-1"] = "diffusion_model.x_embedder.weight"
    by_path["all_final_layer.2-1.linear"] = "diffusion_model.final_layer.linear.weight"
    key_map = {}
    for path, to in by_path.items():
        for name in (f"diffusion_model.{path}", f"transformer.{path}", "lycoris_" + path.replace(".", "_"), path):
            key_map[name] = to
    return key_map


def base_weights(transformer) -> dict:
    """The transformer's own weights under diffusers' names (without peft's adapters and base_layer wrapping)."""
    return {k.replace(".base_layer.", "."): v for k, v in transformer.state_dict().items() if ".lora_" not in k}


def native_weight_keys(transformer) -> list[str]:
    return [f"diffusion_model.{k}" for k in diffusers_to_original(base_weights(transformer)) if k.endswith(".weight")]


def comfy_generic_names(native_keys) -> dict:
    """The names ComfyUI accepts for every weight of any model: `lora_unet_` + the native path with underscores,
    and the native path itself (model_lora_keys_unet's first loop)."""
    out = {}
    for key in native_keys:
        stem = key[len("diffusion_model."):-len(".weight")]
        out["lora_unet_" + stem.replace(".", "_")] = key
        out[key[:-len(".weight")]] = key
    return out


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """The tiny Z-Image with random LoRA weights (lora_B too, so every module changes the model) and its kohya and
    diffusers files."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(tiny_model("zimage"))
    tr = pipe.transformer
    add_lora(tr, RANK, ALPHA, 0.0, lora_target_names(tr, NetworkConfig(lora_modulation=True)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(tr).values():
            layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=gen))
    out = tmp_path_factory.mktemp("zimage lora")
    files = {fmt: save_lora(out / f"{fmt}.safetensors", fmt, tr, {}, INFO, dtype=torch.float32)
             for fmt in ("kohya", "diffusers")}
    return {"pipe": pipe, "files": files}


def test_every_module_name_is_in_comfyuis_zimage_map_and_no_flat_kohya_name_is(trained):
    tr = trained["pipe"].transformer
    cfg = tr.config
    key_map = comfy_zimage_key_map(cfg.n_layers, cfg.n_refiner_layers, cfg.dim)
    key_map.update(comfy_generic_names(native_weight_keys(tr)))
    tensors = load_file(trained["files"]["kohya"])
    stems = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}
    assert len(stems) == len(lora_layers(tr)) > 0
    assert sorted(s for s in stems if s not in key_map) == []
    assert all(f"{s}.alpha" in tensors for s in stems)
    # the trap: sd-scripts' flat names for diffusers' split q/k/v name modules ComfyUI's model does not have
    assert "lora_unet_layers_0_attention_to_q" not in key_map
    assert "lora_unet_layers_0_attention_qkv" in key_map  # (its own fused native names are fine)


def test_applied_as_comfyui_applies_it_the_file_gives_the_trained_weights(trained):
    """ComfyUI adds alpha / rank * up @ down to each mapped native weight (a row slice of the fused qkv for to_q,
    to_k, to_v); converted back to diffusers' names, those are the trained model's weights, base + LoRA."""
    tr = trained["pipe"].transformer
    cfg = tr.config
    key_map = comfy_zimage_key_map(cfg.n_layers, cfg.n_refiner_layers, cfg.dim)
    native = {f"diffusion_model.{k}": v.clone() for k, v in diffusers_to_original(base_weights(tr)).items()}
    tensors = load_file(trained["files"]["kohya"])
    for key in tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        stem = key.rsplit(".", 2)[0]
        down, up, alpha = tensors[key], tensors[f"{stem}.lora_up.weight"], float(tensors[f"{stem}.alpha"])
        delta = alpha / down.shape[0] * up @ down
        target = key_map[stem]
        if isinstance(target, tuple):
            weight, (dim, first, rows) = target
            native[weight].narrow(dim, first, rows).add_(delta)
        else:
            native[target].add_(delta)
    applied = original_to_diffusers(native)
    for path, layer in lora_layers(tr).items():
        expected = layer.base_layer.weight + layer.scaling["default"] * (
            layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
        assert torch.allclose(applied[f"{path}.weight"], expected, atol=1e-5), path


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_diffusers_loads_every_module_and_easel_reads_it_back_exactly(trained, fmt, tiny_model):
    from diffusers import ZImagePipeline

    report = self_check(trained["files"][fmt], ZImagePipeline.from_pretrained(tiny_model("zimage")))
    assert report.modules_loaded == report.modules_in_file == len(lora_layers(trained["pipe"].transformer))
    fresh = ZImagePipeline.from_pretrained(tiny_model("zimage")).transformer
    info = lora_file_info(trained["files"][fmt])
    assert (info.rank, info.alpha) == (RANK, ALPHA)
    add_lora(fresh, info.rank, info.alpha, 0.0, lora_target_names(fresh, NetworkConfig(lora_modulation=True)))
    assert load_lora_into(fresh, {}, trained["files"][fmt]) == len(lora_layers(fresh))
    a, b = trained["pipe"].transformer.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if ".lora_" in k)
