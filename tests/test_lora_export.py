"""LoRA files load in a fresh pipeline exactly as trained: the check a user makes in A1111/ComfyUI/diffusers."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
import re

import numpy as np

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.atomic import atomic_save_file
from engine.models.families import get_family
from engine.models.lora import add_lora, load_lora_into, lora_file_info, lora_layers, LoraLoadError
from engine.models.lora_check import self_check
from engine.models.lora_export import LoraExportInfo, save_lora

RANK, ALPHA = 4, 8  # alpha != rank: a file that loses alpha loads at half strength
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
INFO = {  # what the family records will pass
    "sd15": dict(base_model_version="sd_v1", architecture="stable-diffusion-v1/lora"),
    "sd2": dict(base_model_version="sd_v2_v", architecture="stable-diffusion-v2-768-v/lora", prediction_type="v",
                extra=get_family("sd2").metadata),
    "sdxl": dict(base_model_version="sdxl_base_v1-0", architecture="stable-diffusion-xl-v1-base/lora",
                 text_encoder_names=("text_encoder", "text_encoder_2"), resolution_px=(1024, 1024),
                 naming=get_family("sdxl").kohya_naming),
    "flux": dict(base_model_version="flux1", architecture="flux-1-dev/lora", prediction_type="flow",
                 text_encoder_names=("text_encoder", "text_encoder_2")),
}


@pytest.fixture(scope="module")
def folders(tiny_model):
    return {family: tiny_model(family) for family in ("sd15", "sd2", "sdxl", "flux")}


def fresh(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe):
    extra = {"max_sequence_length": 16} if "transformer" in pipe.components else {}
    return pipe("the cat", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0), **extra).images[0]


def text_encoders_of(pipe):
    return {name: pipe.components[name] for name in ("text_encoder", "text_encoder_2")
            if name in pipe.components and "CLIP" in type(pipe.components[name]).__name__}


def trained_pipeline(folder, train_text_encoders=True):
    """A pipeline whose LoRA changes the output, as after training (lora_B randomised; it starts at zero)."""
    pipe = fresh(folder)
    denoiser = pipe.components.get("unet") or pipe.components["transformer"]
    add_lora(denoiser, RANK, ALPHA, 0.0, UNET_TARGETS)
    tes = text_encoders_of(pipe) if train_text_encoders else {}
    for te in tes.values():
        add_lora(te, RANK, ALPHA, 0.0, TE_TARGETS)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in (denoiser, *tes.values()):
            for layer in lora_layers(module).values():
                layer.lora_B["default"].weight.normal_(0, 0.05, generator=g)
    return pipe, denoiser, tes


@pytest.fixture(scope="module", params=["sd15", "sd2", "sdxl"])
def exported(request, folders, tmp_path_factory):
    family = request.param
    pipe, denoiser, tes = trained_pipeline(folders[family])
    out = tmp_path_factory.mktemp(f"lora_{family}")
    info = LoraExportInfo(title=f"my_{family}_lora", steps=300, tag_frequency={"10_cat": {"cat": 10, "red": 3}},
                          training_comment="trigger: ohwx", **INFO[family])
    files = {fmt: save_lora(out / f"{fmt}.safetensors", fmt, denoiser, tes, info) for fmt in ("kohya", "diffusers")}
    if family == "sdxl":  # fp32 proves the mapping exact; SDXL (two text encoders) has the most names to get right
        files["kohya_fp32"] = save_lora(out / "kohya32.safetensors", "kohya", denoiser, tes, info, dtype=torch.float32)
    return dict(family=family, folder=folders[family], files=files, trained=render(pipe),
                base=render(fresh(folders[family])), n_modules=sum(len(lora_layers(m)) for m in (denoiser, *tes.values())))


@pytest.mark.parametrize("fmt", ["kohya", "diffusers", "kohya_fp32"])
def test_file_loads_fully_and_renders_like_the_trained_model(exported, fmt):
    if fmt not in exported["files"]:
        pytest.skip("fp32 export is checked on SDXL only")
    pipe = fresh(exported["folder"])
    report = self_check(exported["files"][fmt], pipe)
    assert report.modules_in_file == report.modules_loaded == exported["n_modules"]
    assert np.array_equal(render(pipe), exported["base"])  # the self-check left the pipeline as it was

    pipe.load_lora_weights(str(exported["files"][fmt]))
    image = render(pipe)
    assert np.abs(image - exported["base"]).max() > 0.05  # the LoRA does something...
    tolerance = 1e-5 if fmt == "kohya_fp32" else 5e-3  # ...exactly what it did in training (up to fp16 rounding)
    assert np.abs(image - exported["trained"]).max() < tolerance


def test_kohya_names_and_alpha_follow_a1111(exported):
    tensors = load_file(str(exported["files"]["kohya"]))
    # the prefix before the module path: diffusers block names (SD1.x/SD2) or the original ones (SDXL, as sd-scripts)
    prefixes = {re.split(r"_(text_model|down_blocks|mid_block|up_blocks|input_blocks|middle_block|output_blocks)_",
                         k)[0] for k in tensors}
    expected_te = {"lora_te1", "lora_te2"} if exported["family"] == "sdxl" else {"lora_te"}
    assert prefixes == {"lora_unet"} | expected_te  # trap 2 (`unet.` prefix) and trap 3 (`text_model.`)
    assert not any(k.startswith("lora_te") and "_text_model_" not in k for k in tensors)
    alphas = {float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {float(ALPHA)}  # trap 1: the real alpha, not the rank
    assert len([k for k in tensors if k.endswith(".alpha")]) == exported["n_modules"]
    assert all(v.dtype == torch.float16 for v in tensors.values())


def test_wrong_alpha_would_show(exported, tmp_path):
    """The tests above can fail: a kohya file with alpha = rank (diffusers' converter default) renders differently."""
    tensors = load_file(str(exported["files"]["kohya"]))
    with safe_open(str(exported["files"]["kohya"]), "pt") as f:
        metadata = f.metadata()
    halved = {k: (torch.tensor(float(RANK), dtype=v.dtype) if k.endswith(".alpha") else v) for k, v in tensors.items()}
    save_file(halved, str(tmp_path / "half.safetensors"), metadata=metadata)
    pipe = fresh(exported["folder"])
    pipe.load_lora_weights(str(tmp_path / "half.safetensors"))
    assert np.abs(render(pipe) - exported["trained"]).max() > 0.02


def test_metadata_reads_back_as_a1111_expects(exported):
    with safe_open(str(exported["files"]["kohya"]), "pt") as f:
        meta = f.metadata()
    family = exported["family"]
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "8")
    assert meta["ss_base_model_version"] == INFO[family]["base_model_version"]
    assert meta["ss_v2"] == str(family == "sd2")
    assert meta["ss_output_name"] == meta["modelspec.title"] == f"my_{family}_lora"
    assert meta["ss_steps"] == "300"
    assert json.loads(meta["ss_tag_frequency"]) == {"10_cat": {"cat": 10, "red": 3}}
    assert meta["ss_training_comment"] == "trigger: ohwx"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == INFO[family]["architecture"]
    assert meta["modelspec.resolution"] == ("1024x1024" if family == "sdxl" else "512x512")
    assert meta["modelspec.prediction_type"] == INFO[family].get("prediction_type", "epsilon")

    with safe_open(str(exported["files"]["diffusers"]), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    adapter = json.loads(meta["lora_adapter_metadata"])  # trap 4: without it diffusers assumes alpha = rank
    assert adapter["unet.lora_alpha"] == ALPHA and adapter["unet.r"] == RANK
    assert adapter["text_encoder.lora_alpha"] == ALPHA
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder"} | ({"text_encoder_2"} if family == "sdxl" else set())


def test_file_info_reports_rank_and_alpha(exported):
    for fmt in ("kohya", "diffusers"):
        info = lora_file_info(exported["files"][fmt])
        assert (info.format, info.rank, info.alpha) == (fmt, RANK, ALPHA)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_continue_from_file_reproduces_the_model(exported, fmt):
    """Load a file back into new adapters (resume / continue training): same output, even with another alpha."""
    pipe = fresh(exported["folder"])
    info = lora_file_info(exported["files"][fmt])
    tes = text_encoders_of(pipe)
    for module, targets in ((pipe.unet, UNET_TARGETS), *((te, TE_TARGETS) for te in tes.values())):
        add_lora(module, info.rank, alpha=1.0, dropout=0.0, target_modules=targets)  # alpha differs from the file
    loaded = load_lora_into(pipe.unet, tes, exported["files"][fmt], text_encoder_names=tuple(tes))
    assert loaded == exported["n_modules"]
    assert np.abs(render(pipe) - exported["trained"]).max() < 5e-3


def test_load_lora_into_names_unmatched_keys(folders, tmp_path):
    pipe, denoiser, _ = trained_pipeline(folders["sd15"], train_text_encoders=False)
    path = save_lora(tmp_path / "l.safetensors", "kohya", denoiser, {}, LoraExportInfo("t", **INFO["sd15"]))
    fresh_pipe = fresh(folders["sd15"])
    add_lora(fresh_pipe.unet, RANK, ALPHA, 0.0, ["to_q"])  # fewer targets than the file has
    with pytest.raises(LoraLoadError, match=r"match no adapter layer .*lora_unet_\w+_to_k\.lora_down\.weight"):
        load_lora_into(fresh_pipe.unet, {}, path)


# ---------------------------------------------------------------------------------------------- self-check

def _rewrite(src, dst, rename):
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata()
        tensors = {rename(k): f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(dst), metadata=metadata)
    return dst


@pytest.fixture(scope="module")
def sd15_files(folders, tmp_path_factory):
    pipe, denoiser, tes = trained_pipeline(folders["sd15"])
    out = tmp_path_factory.mktemp("sd15_files")
    info = LoraExportInfo("t", **INFO["sd15"])
    return {fmt: save_lora(out / f"{fmt}.safetensors", fmt, denoiser, tes, info) for fmt in ("kohya", "diffusers")}


@pytest.mark.parametrize("fmt, old, new, named", [
    ("diffusers", "attn1.to_q.lora_A", "attn1.to_qq.lora_A", "attn1.to_qq.lora_A.weight"),
    ("diffusers", "layers.0.self_attn.q_proj.lora_A", "layers.0.self_attn.qq_proj.lora_A", "qq_proj.lora_A.weight"),
    ("kohya", "attn1_to_q.", "attn1_to_qq.", "attn1_to_qq"),
    ("kohya", "lora_te_", "lora_te3_", "0 of 40 LoRA modules placed"),
])
def test_self_check_rejects_a_corrupted_file_naming_the_key(folders, sd15_files, tmp_path, fmt, old, new, named):
    first = sorted(k for k in load_file(str(sd15_files[fmt])) if old in k)[0]
    bad = _rewrite(sd15_files[fmt], tmp_path / "bad.safetensors", lambda k: k.replace(old, new) if k == first or
                   (fmt == "kohya" and k.split(".")[0] == first.split(".")[0]) or (old == "lora_te_" and old in k) else k)
    pipe = fresh(folders["sd15"])
    with pytest.raises(LoraLoadError, match=named.replace(".", r"\.")):
        self_check(bad, pipe)
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())  # nothing left behind


def test_self_check_on_the_training_pipeline_keeps_training_state(folders, sd15_files):
    pipe, denoiser, tes = trained_pipeline(folders["sd15"])
    before = render(pipe)
    trainable = [n for n, p in denoiser.named_parameters() if p.requires_grad]
    self_check(sd15_files["kohya"], pipe)
    assert [n for n, p in denoiser.named_parameters() if p.requires_grad] == trainable
    assert denoiser.active_adapters() == ["default"] and tes["text_encoder"].active_adapters() == ["default"]
    assert np.array_equal(render(pipe), before)


# ---------------------------------------------------------------------------------------------- FLUX, writes

def test_flux_diffusers_format_loads_and_kohya_without_bfl_names_is_refused(folders, tmp_path):
    pipe, transformer, _ = trained_pipeline(folders["flux"], train_text_encoders=False)
    info = LoraExportInfo("f", **INFO["flux"])
    with pytest.raises(ValueError, match="use format 'diffusers'"):
        save_lora(tmp_path / "k.safetensors", "kohya", transformer, {}, info)
    path = save_lora(tmp_path / "f.safetensors", "diffusers", transformer, {}, info)
    assert all(k.startswith("transformer.") for k in load_file(str(path)))
    trained = render(pipe)
    check = fresh(folders["flux"])
    assert self_check(path, check).modules_loaded == len(lora_layers(transformer))
    check.load_lora_weights(str(path))
    assert np.abs(render(check) - trained).max() < 5e-3


def test_unknown_format_suggests_the_closest(folders, tmp_path):
    _, denoiser, _ = trained_pipeline(folders["sd15"], train_text_encoders=False)
    with pytest.raises(ValueError, match=r"export.format: 'koyha' is not one of kohya, diffusers \(did you mean 'kohya'"):
        save_lora(tmp_path / "x.safetensors", "koyha", denoiser, {}, LoraExportInfo("t", **INFO["sd15"]))


def test_atomic_save_keeps_the_last_good_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "lora.safetensors"
    atomic_save_file({"a": torch.ones(2)}, path, {"ss_steps": "1"})
    assert not (tmp_path / "lora.safetensors.tmp").exists()

    import safetensors.torch

    def disk_full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError):
        atomic_save_file({"a": torch.zeros(2)}, path, {"ss_steps": "2"})
    assert torch.equal(load_file(str(path))["a"], torch.ones(2))  # the previous save is intact
    with pytest.raises(TypeError, match="ss_steps"):
        atomic_save_file({"a": torch.ones(2)}, path, {"ss_steps": 3})


@pytest.mark.parametrize("style", ["ldm", "diffusers"])
def test_sdxl_kohya_files_of_either_unet_name_style_load_back_exactly(folders, tmp_path, style):
    """SDXL is written with sd-scripts' original names now; files of older Easel versions (diffusers names) must
    still continue training (network.init_from) with the same weights."""
    pipe, denoiser, tes = trained_pipeline(folders["sdxl"])
    naming = dataclasses.replace(INFO["sdxl"]["naming"], unet_style=style)
    info = LoraExportInfo(title="x", **{**INFO["sdxl"], "naming": naming})
    path = save_lora(tmp_path / "x.safetensors", "kohya", denoiser, tes, info, dtype=torch.float32)
    keys = load_file(str(path)).keys()
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys) == (style == "ldm")
    assert any(k.startswith("lora_unet_down_blocks_") for k in keys) == (style == "diffusers")
    self_check(path, fresh(folders["sdxl"]))  # diffusers places every key of either style

    target = fresh(folders["sdxl"])
    add_lora(target.unet, RANK, ALPHA, 0.0, UNET_TARGETS)
    target_tes = text_encoders_of(target)
    for te in target_tes.values():
        add_lora(te, RANK, ALPHA, 0.0, TE_TARGETS)
    loaded = load_lora_into(target.unet, target_tes, path, text_encoder_names=info.text_encoder_names)
    assert loaded == len(lora_layers(denoiser)) + sum(len(lora_layers(te)) for te in tes.values())
    for name, layer in lora_layers(denoiser).items():
        assert torch.allclose(layer.lora_B["default"].weight, lora_layers(target.unet)[name].lora_B["default"].weight)
