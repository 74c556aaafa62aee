"""Chroma end to end on a tiny random Chroma built on disk in both layouts a user has: a diffusers folder, and the
ComfyUI files (BFL transformer + t5xxl + ae + a config folder). Training goes through the shipped presets
(presets/chroma-lora-24gb.yaml on the folder, -16gb.yaml on the files) and their environment variables, as FLUX's
tests do; the LoRA files are checked against ComfyUI's key map and diffusers' ChromaPipeline."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.config.schema import ModelConfig, NetworkConfig
from engine.failures import UserError
from engine.models.families import capabilities, get_family
from engine.models.families.chroma.files import write_chroma_files
from dataset_factory import make_clean_dataset
from support.runs import train_run

CHROMA = get_family("chroma")
BLOCKS = capabilities("chroma").block_lists
PRESETS = {"folder": "presets/chroma-lora-24gb.yaml", "files": "presets/chroma-lora-16gb.yaml"}
FAST = ["schedules.unet.warmup_steps=0", "optimizers.unet.lr=1e-3", "sampling.steps=2",
        "sampling.prompts=[ohwx portrait]", "output.save_every_n_steps=0"]
LAYERS = 12 + 5  # the tiny Chroma's LoRA layers: every Linear of its one double and one single block


@pytest.fixture(scope="module")
def chroma(tmp_path_factory, tiny_model):
    """{"folder": the diffusers folder, "files": the ComfyUI files, "data": a 6-image dataset, "root"}."""
    root = tmp_path_factory.mktemp("chroma models ü")
    folder = tiny_model("chroma")
    data = root / "subject"
    make_clean_dataset(data, n=6, trigger="ohwx", sizes=((64, 64), (64, 96), (96, 64)))
    return {"folder": folder, "files": write_chroma_files(folder, root / "comfyui"), "data": data, "root": root}


def env_for(chroma, layout: str, out, steps: int = 20) -> dict:
    env = {"DATA_DIR": str(chroma["data"]), "MAX_STEPS": str(steps), "RESOLUTION": "64", "MIN_BUCKET_RESO": "64",
           "MAX_BUCKET_RESO": "96", "OUT_DIR": str(out), "RANK": "4", "ALPHA": "4"}
    env["MODEL_PATH"] = str(chroma["folder"] if layout == "folder" else chroma["files"]["transformer"])
    return env


def file_overrides(chroma, layout: str) -> list:
    if layout == "folder":
        return []
    f = chroma["files"]  # the 16 GB preset swaps 8 blocks; the tiny Chroma has 2
    return [f"model.t5_path={f['t5']}", f"model.vae_path={f['ae']}", f"model.single_file_config={f['config']}",
            "model.block_swap=1"]


def chroma_run(chroma, layout, root, *overrides, steps=20):
    return train_run(PRESETS[layout], root, *FAST, *file_overrides(chroma, layout), *overrides,
                     env=env_for(chroma, layout, root, steps))


@pytest.fixture(scope="module")
def runs(chroma, tmp_path_factory):
    """One 20-step run of each preset: {layout: (run_dir, exit code, events)}."""
    return {layout: chroma_run(chroma, layout, tmp_path_factory.mktemp(f"runs {layout}")) for layout in PRESETS}


def lora_file(run_dir):
    return sorted(run_dir.glob("*.safetensors"))[0]


def fresh(folder):
    from diffusers import ChromaPipeline

    pipe = ChromaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe, **kwargs):
    return pipe(**{"prompt": "the cat", "negative_prompt": "blurry", "num_inference_steps": 2, "height": 64,
                   "width": 64, "output_type": "np", "max_sequence_length": 32,
                   "generator": torch.Generator().manual_seed(0), **kwargs}).images[0]


def load(folder, dtype=torch.float32):
    return CHROMA.load(ModelConfig(family="chroma", path=str(folder)), dtype, "cpu")


def cond_of(comps, *captions):
    return CHROMA.encode_text(comps, list(captions))


# ---------------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("layout", ["folder", "files"])
def test_each_preset_trains_20_steps_and_its_lora_changes_the_sample(runs, layout):
    run_dir, code, events = runs[layout]
    assert code == 0, events[-1]
    steps = [e for e in events if e["kind"] == "step"]
    assert len(steps) == 20 and all(math.isfinite(e["loss"]) for e in steps)
    texts = [e["text"] for e in events if e["kind"] == "status"]
    assert "Storing the transformer in fp8, block by block" in texts   # both presets' fp8 base, trained on the CPU
    assert ("Block swap: 1 transformer blocks wait in CPU RAM between uses" in texts) == (layout == "files")
    assert [e["format"] for e in events if e["kind"] == "saved"] == ["kohya"]   # saved = its self-check passed
    with safe_open(str(lora_file(run_dir)), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ("chroma", "chroma/lora")
    assert meta["modelspec.implementation"] == "https://huggingface.co/lodestones/Chroma"
    assert meta["ss_network_module"] == "networks.lora_flux" and meta["ss_model_type"] == "chroma"
    assert "modelspec.prediction_type" not in meta
    assert {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_single_blocks_0_linear1.alpha"} \
        <= set(keys)
    samples = {e["strength"]: e["path"] for e in events if e["kind"] == "sample"}
    assert sorted(samples) == [0.5, 0.8, 1.0, 1.2]
    weak, strong = (np.asarray(Image.open(samples[s]), dtype=np.int16) for s in (0.5, 1.2))
    assert np.abs(weak - strong).mean() > 0.5  # the LoRA's strength changes the picture


def test_resume_equals_an_uninterrupted_chroma_run(chroma, tmp_path, monkeypatch):
    from engine.config.load import load_preset
    from engine.runs import create_run_dir
    from run_control import stop_then_resume

    straight, code, _ = chroma_run(chroma, "files", tmp_path / "a", steps=6)
    assert code == 0
    preset = load_preset(PRESETS["files"], [*FAST, *file_overrides(chroma, "files")],
                         env=env_for(chroma, "files", tmp_path, 6))
    stopped = create_run_dir(preset, root=tmp_path / "b")
    stop_then_resume(stopped, monkeypatch, 3)
    a, b = load_file(lora_file(straight)), load_file(lora_file(stopped))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_saved_lora_loads_into_chroma_pipeline_with_every_key_and_changes_the_image(chroma, runs):
    from engine.models.lora_check import self_check

    path = lora_file(runs["folder"][0])
    pipe = fresh(chroma["folder"])
    base = render(pipe)
    report = self_check(path, pipe)  # what every save ran; the single blocks' linear1 by shape at this width
    assert report.modules_loaded == report.layers_expected == LAYERS
    # diffusers' own kohya converter (FluxLoraLoaderMixin) splits single-block linear1 only at FLUX.1's widths
    pipe.load_lora_weights({k: v for k, v in load_file(str(path)).items() if "_linear1." not in k})
    assert np.abs(render(pipe) - base).max() > 1e-3


def test_the_lora_lowers_the_denoising_loss_on_its_own_data(chroma, tmp_path):
    """At fixed noise and noise levels, the base model and the base plus the trained LoRA, on the run's 6 images
    and captions. Measured on the CPU (seed 42): 60 steps lower the loss by 13 %, and the same LoRA with its
    up-weights shuffled (same size, nothing learnt) moves it by +0.3 %. 5 % is well clear of both: a third of the
    effect, and over ten times what a LoRA that learnt nothing does."""
    from engine.models.lora import add_lora, load_lora_into, lora_layers
    from engine.training.objectives import make_objective

    run_dir, code, events = chroma_run(chroma, "folder", tmp_path, "sampling.prompts=[]", steps=60)
    assert code == 0, events[-1]
    comps = load(chroma["folder"])
    pairs = []
    for image in sorted(p for p in chroma["data"].rglob("*") if p.suffix in (".png", ".jpg")):
        pixels = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 127.5 - 1
        pairs.append((CHROMA.encode_image(comps, torch.from_numpy(pixels).permute(2, 0, 1)[None]),
                      cond_of(comps, image.with_suffix(".txt").read_text(encoding="utf-8"))))
    flow = make_objective("flow", None)

    def loss() -> float:
        g, losses = torch.Generator().manual_seed(0), []
        with torch.no_grad():
            for x0, cond in pairs:
                for t in (0.2, 0.5, 0.8):
                    noise, t = torch.randn(x0.shape, generator=g), torch.tensor([t])
                    pred = CHROMA.predict(comps, flow.add_noise(x0, noise, t), t, cond, None)
                    losses.append(torch.nn.functional.mse_loss(pred, flow.target(x0, noise, t)))
        return torch.stack(losses).mean().item()

    base = loss()
    add_lora(comps.denoiser, 4, 4.0, 0.0, CHROMA.lora_target_names(comps.denoiser, NetworkConfig()))
    assert load_lora_into(comps.denoiser, {}, lora_file(run_dir), naming=CHROMA.kohya_naming) == LAYERS
    trained = loss()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(comps.denoiser).values():
            up = layer.lora_B["default"].weight
            up.copy_(up.flatten()[torch.randperm(up.numel(), generator=g)].view_as(up))
    shuffled = loss()
    assert trained < 0.95 * base, (base, trained)
    assert shuffled > 0.99 * base, (base, shuffled)


# ---------------------------------------------------------------------------------------------- ComfyUI's names

# ComfyUI's LoRA key map for Chroma, as data. comfy/model_base.py: `class Chroma(Flux)`, so comfy/lora.py
# model_lora_keys_unet takes its Flux branch: `lora_unet_` + the path of every `diffusion_model.*.weight` of the model
# (dots as underscores), and comfy.utils.flux_to_diffusers' map of diffusers names onto row slices of the fused
# weights. The model's weights are those of the Chroma1 file ComfyUI loads (BFL names, as diffusers'
# convert_chroma_transformer_checkpoint_to_diffusers reads them): double_blocks.N.{img,txt}_attn.{qkv,proj},
# {img,txt}_mlp.{0,2}; single_blocks.N.linear1/linear2; img_in, txt_in, final_layer.linear; the approximator
# distilled_guidance_layer.{in_proj,out_proj,layers.N.in_layer,layers.N.out_layer} (its norms' `.scale` are no
# `.weight`). No modulation linears: that is what Chroma removed from FLUX.1.
def comfy_chroma_modules(double: int, single: int, approximator_layers: int = 5) -> set[str]:
    names = {"img_in", "txt_in", "final_layer.linear", "distilled_guidance_layer.in_proj",
             "distilled_guidance_layer.out_proj"}
    names |= {f"distilled_guidance_layer.layers.{i}.{p}" for i in range(approximator_layers)
              for p in ("in_layer", "out_layer")}
    names |= {f"double_blocks.{i}.{s}_{p}" for i in range(double) for s in ("img", "txt")
              for p in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")}
    names |= {f"single_blocks.{i}.{p}" for i in range(single) for p in ("linear1", "linear2")}
    return {"lora_unet_" + n.replace(".", "_") for n in names}


def comfy_chroma_slices(double: int, single: int, hidden: int, mlp: int) -> dict[str, tuple[str, int, int]]:
    """flux_to_diffusers' fused part of the map: diffusers layer -> (file module, first row, rows)."""
    out = {}
    for i in range(double):
        for stream, parts in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for n, part in enumerate(parts):
                out[f"transformer_blocks.{i}.attn.{part}"] = (f"lora_unet_double_blocks_{i}_{stream}_attn_qkv",
                                                              n * hidden, hidden)
    for i in range(single):
        for n, part in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):
            out[f"single_transformer_blocks.{i}.{part}"] = (f"lora_unet_single_blocks_{i}_linear1", n * hidden, hidden)
        out[f"single_transformer_blocks.{i}.proj_mlp"] = (f"lora_unet_single_blocks_{i}_linear1", 3 * hidden, mlp)
    return out


def stems(path) -> set[str]:
    return {k.split(".", 1)[0] for k in load_file(str(path))}


def test_every_module_the_runs_wrote_is_in_comfyuis_chroma_key_map(runs):
    for run_dir, _, _ in runs.values():
        written = stems(lora_file(run_dir))
        assert written <= comfy_chroma_modules(1, 1, approximator_layers=1)
        assert len(written) == 8 + 2  # the fused qkv stand for 3 layers, linear1 for 4: all 17


def test_comfyui_applies_each_fused_slice_at_the_strength_it_trained(chroma, tmp_path):
    """What ComfyUI computes for a diffusers layer inside a fused module: rows [first, first + rows) of up @ down,
    times alpha / rank; it must be that layer's own weight change (lora_B @ lora_A * scaling), for every slice."""
    from engine.models.lora import add_lora, lora_file_components, lora_file_info, lora_layers
    from engine.models.lora_export import LoraExportInfo, save_lora
    from engine.models.lora_naming import naming_of

    transformer = fresh(chroma["folder"]).transformer
    add_lora(transformer, 4, 8.0, 0.0, CHROMA.lora_target_names(transformer, NetworkConfig()))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(transformer).values():
            layer.lora_B["default"].weight.normal_(0, 0.05, generator=g)
    info = LoraExportInfo(title="t", base_model_version="chroma", architecture="chroma/lora", prediction_type="",
                          implementation="", text_encoder_names=("text_encoder",), resolution_px=(64, 64),
                          naming=CHROMA.kohya_naming)
    path = save_lora(tmp_path / "k.safetensors", "kohya", transformer, {}, info, dtype=torch.float32)
    tensors = load_file(str(path))
    # FLUX's naming, shared on purpose (record.py): a bare ChromaTransformer2DModel gets it, the file reads back
    assert naming_of(transformer) is CHROMA.kohya_naming is get_family("flux").kohya_naming
    assert lora_file_info(path).rank == 4 and lora_file_components(path) == {"transformer"}
    slices = comfy_chroma_slices(1, 1, hidden=32, mlp=128)
    for path, layer in lora_layers(transformer).items():
        want = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
        stem, first, rows = slices.get(path, (None, 0, 0))
        if stem is None:  # an unfused module: the whole of it
            stem = next(s for s in comfy_chroma_modules(1, 1, 1) if s.endswith(_bfl_tail(path)))
            first, rows = 0, tensors[f"{stem}.lora_up.weight"].shape[0]
        up, down = tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"]
        got = up[first:first + rows] @ down * (float(tensors[f"{stem}.alpha"]) / down.shape[0])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=path)


def _bfl_tail(path: str) -> str:
    """The kohya tail of an unfused diffusers layer (flux/bfl_names.py's renames, as sd-scripts names them)."""
    tails = {"attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj", "ff.net.0.proj": "img_mlp_0",
             "ff.net.2": "img_mlp_2", "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2",
             "proj_out": "linear2"}
    return next(tail for suffix, tail in tails.items() if path.endswith("." + suffix))


def test_real_size_chroma_writes_only_modules_comfyui_maps():
    """Chroma1 at full size on the meta device: 19 double blocks x 8 modules + 38 single x 2."""
    from diffusers import ChromaTransformer2DModel

    from engine.models.lora import add_lora
    from engine.models.lora_export import LoraExportInfo, _kohya_tensors

    with torch.device("meta"):
        transformer = ChromaTransformer2DModel()
        add_lora(transformer, 4, 4.0, 0.0, CHROMA.lora_target_names(transformer, NetworkConfig()))
        info = LoraExportInfo(title="t", base_model_version="chroma", architecture="", prediction_type="",
                              implementation="", text_encoder_names=(), resolution_px=(1024, 1024),
                              naming=CHROMA.kohya_naming)
        tensors, _ = _kohya_tensors({"transformer": transformer}, info, "default")
    written = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}
    assert len(written) == 19 * 8 + 38 * 2 and written <= comfy_chroma_modules(19, 38)
    assert tuple(tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape) == (3 * 3072 + 12288, 16)


# ---------------------------------------------------------------------------------------------- loading

def test_bfl_conversion_matches_diffusers_converter_at_full_width_and_round_trips():
    from diffusers import ChromaTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers

    from engine.models.families.chroma.bfl_names import chroma_to_diffusers, diffusers_to_chroma

    with torch.device("meta"):  # the real width (diffusers' converter hard-codes 3072), no memory used
        big = ChromaTransformer2DModel(num_layers=2, num_single_layers=2)
    bfl = diffusers_to_chroma(big.state_dict())
    assert {"distilled_guidance_layer.layers.4.in_layer.weight", "distilled_guidance_layer.norms.0.scale"} <= set(bfl)
    reference = convert_chroma_transformer_checkpoint_to_diffusers(dict(bfl))
    ours = chroma_to_diffusers(bfl)
    assert set(ours) == set(reference) == set(big.state_dict())
    assert all(ours[k].shape == reference[k].shape for k in reference)
    small = ChromaTransformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                     num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8),
                                     approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2)
    state = {k: torch.randn_like(v) for k, v in small.state_dict().items()}
    back = chroma_to_diffusers({f"model.diffusion_model.{k}": v for k, v in diffusers_to_chroma(state).items()})
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_the_comfyui_files_load_the_same_weights_as_the_folder_fp8_file_included(chroma, tmp_path):
    from diffusers import ChromaPipeline

    from engine.models.families.chroma.loading import load_chroma_pipeline

    f = chroma["files"]
    fp8 = write_chroma_files(chroma["folder"], tmp_path / "fp8", transformer_dtype=torch.float8_e4m3fn)
    reference = ChromaPipeline.from_pretrained(chroma["folder"])
    for transformer, tolerance in ((f["transformer"], 0.0), (fp8["transformer"], 0.07)):
        cfg = ModelConfig(family="chroma", path=str(transformer), t5_path=str(f["t5"]), vae_path=str(f["ae"]),
                          single_file_config=str(f["config"]))
        steps = []
        pipe = load_chroma_pipeline(cfg, torch.float32, lambda text, n, total: steps.append((n, total)))
        assert steps[0] == (0, 3) and steps[-1] == (3, 3)  # progress per component
        for part in ("transformer", "vae"):
            ours, theirs = getattr(pipe, part).state_dict(), getattr(reference, part).state_dict()
            assert set(ours) == set(theirs)
            worst = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in theirs)
            assert worst <= (tolerance if part == "transformer" else 0.0)
        t5_ours, t5_theirs = pipe.text_encoder.state_dict(), reference.text_encoder.state_dict()
        assert all(torch.allclose(t5_ours[k], t5_theirs[k].half().float()) for k in t5_theirs)  # the fp16 file


@pytest.fixture(scope="module")
def flux_file(chroma):
    """A file with FLUX.1's BFL names and no approximator (the kind is told by names alone)."""
    path = chroma["root"] / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 1), "img_in.weight": torch.zeros(1, 1)},
              str(path))
    return path


@pytest.mark.parametrize("key, value, words", [
    ("model.path", "t5", ["model.path", "T5-XXL", "model.t5_path"]),
    ("model.t5_path", "transformer", ["model.t5_path", "a Chroma transformer", "model.path"]),
    ("model.vae_path", "t5", ["model.vae_path", "T5-XXL", "model.t5_path"]),
    ("model.path", "flux", ["model.path", "FLUX.1 transformer", "model.family: flux"]),
    ("model.t5_path", "missing", ["model.t5_path", "no such file"]),
])
def test_a_file_of_the_wrong_kind_names_the_key_and_where_it_belongs(chroma, flux_file, key, value, words):
    from engine.models.families.chroma.loading import load_chroma_pipeline

    f = chroma["files"]
    paths = {"model.path": f["transformer"], "model.t5_path": f["t5"], "model.vae_path": f["ae"]}
    paths[key] = {"t5": f["t5"], "transformer": f["transformer"], "flux": flux_file,
                  "missing": chroma["root"] / "nope.safetensors"}[value]
    cfg = ModelConfig(family="chroma", path=str(paths["model.path"]), t5_path=str(paths["model.t5_path"]),
                      vae_path=str(paths["model.vae_path"]), single_file_config=str(f["config"]))
    with pytest.raises(UserError) as info:
        load_chroma_pipeline(cfg, torch.float32, lambda *a: None)
    text = info.value.message + " " + info.value.hint
    assert all(w in text for w in words), text


def test_single_files_without_their_partners_or_configs_say_which(chroma):
    from engine.models.families.chroma.loading import load_chroma_pipeline

    f = chroma["files"]
    with pytest.raises(UserError, match="model.single_file_config is empty") as info:
        load_chroma_pipeline(ModelConfig(family="chroma", path=str(f["transformer"])), torch.float32, lambda *a: None)
    assert "tokenizer" in info.value.hint and "ChromaPipeline" in info.value.hint
    with pytest.raises(UserError, match="model.t5_path is empty") as info:
        load_chroma_pipeline(ModelConfig(family="chroma", path=str(f["transformer"]),
                                         single_file_config=str(f["config"])), torch.float32, lambda *a: None)
    assert "t5xxl_fp16.safetensors" in info.value.hint


def test_chroma_is_told_from_flux_on_disk(chroma, flux_file, tiny_model):
    from engine.models.families.chroma import detect
    from engine.models.families.detect import family_of_folder

    assert family_of_folder(chroma["folder"]) == "chroma"
    assert family_of_folder(tiny_model("flux")) == "flux"
    with safe_open(str(chroma["files"]["transformer"]), "pt") as f:
        assert detect.family_of_checkpoint(list(f.keys())) == "chroma"
    assert detect.family_of_checkpoint(["model.diffusion_model.distilled_guidance_layer.in_proj.weight",
                                        "model.diffusion_model.double_blocks.0.img_attn.qkv.weight"]) == "chroma"
    assert detect.family_of_checkpoint(["double_blocks.0.img_attn.qkv.weight"]) is None   # FLUX.1's


def test_the_registry_calls_a_chroma_file_chroma(chroma):
    from engine.models.families.detect import family_of_checkpoint

    assert family_of_checkpoint(chroma["files"]["transformer"]) == "chroma"


# ---------------------------------------------------------------------------------------------- the pieces

def test_predict_cuts_the_text_exactly_and_masks_shorter_captions(chroma):
    """A batch of two captions of different lengths: each sample as if alone, and as the transformer computes
    with the whole padded text under a boolean mask of the caption plus one padding token."""
    from engine.models.families.flux.record import image_ids, pack, unpack

    comps = load(chroma["folder"])
    cond = cond_of(comps, "the cat", "a long caption about the cat sitting on a mat")
    x = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        both = CHROMA.predict(comps, x, t, cond, None)
        alone = [CHROMA.predict(comps, x[i:i + 1], t[i:i + 1], {k: v[i:i + 1] for k, v in cond.items()}, None)
                 for i in range(2)]
        mask = cond["prompt_mask"]
        attended = torch.arange(mask.shape[1])[None] <= mask.sum(1)[:, None]
        full = comps.denoiser(hidden_states=pack(x), timestep=t, encoder_hidden_states=cond["prompt_embeds"],
                              txt_ids=torch.zeros(mask.shape[1], 3), img_ids=image_ids(8, 12, "cpu", torch.float32),
                              attention_mask=torch.cat([attended, torch.ones(2, 24, dtype=torch.bool)], 1),
                              return_dict=False)[0]
    torch.testing.assert_close(both, torch.cat(alone), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both, unpack(full, 8, 12), rtol=1e-5, atol=1e-5)
    assert cond["prompt_embeds"].shape[1] == 512 and cond["prompt_mask"].dtype == torch.bool   # cache-friendly


def test_samples_render_as_chroma_pipeline_with_a_boolean_mask(chroma):
    """sample_kwargs (prompts encoded ahead) gives what ChromaPipeline gives from the prompt text once its mask is
    boolean; its own float 0/1 mask is added to the attention scores instead (diffusers #12116, #13619)."""
    comps = load(chroma["folder"])
    pipe = comps.pipe
    embeds, mask = pipe._get_t5_prompt_embeds("the cat", max_sequence_length=32)
    negative, negative_mask = pipe._get_t5_prompt_embeds("blurry", max_sequence_length=32)
    boolean = render(pipe, prompt=None, negative_prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask.bool(),
                     negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask.bool())
    ours = render(pipe, prompt=None, negative_prompt=None, **CHROMA.sample_kwargs(
        {k: v[0] for k, v in cond_of(comps, "the cat").items()},
        {k: v[0] for k, v in cond_of(comps, "blurry").items()}, "cpu"))
    assert np.abs(ours - boolean).max() < 1e-4
    assert np.abs(ours - render(pipe)).max() > 1e-3   # the float mask lets every padding token in


def test_default_lora_targets_are_every_block_linear_and_modulation_is_refused(chroma):
    from engine.config.load import ConfigError, load_preset

    transformer = load(chroma["folder"]).denoiser
    names = CHROMA.lora_target_names(transformer, NetworkConfig())
    linears = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)
               and re.match(r"^(transformer_blocks|single_transformer_blocks)\.", n)]
    assert names == linears and len(names) == LAYERS
    assert {n.split(".", 2)[2] for n in names} == set(CHROMA.lora_targets)
    assert not any(n.startswith(("distilled_guidance_layer", "proj_out", "x_embedder")) for n in names)
    assert len(CHROMA.lora_target_names(transformer, NetworkConfig(targets=["to_q", "to_k", "to_v"]))) == 6
    with pytest.raises(ConfigError) as info:
        load_preset(PRESETS["folder"], ["network.lora_modulation=true"])
    assert [key for key, _ in info.value.problems] == ["network.lora_modulation"]


def test_fp8_storage_keeps_the_lora_in_fp32_and_computes_like_the_rounded_weights(chroma):
    from engine.models.base_storage import store_in_fp8
    from engine.models.lora import add_lora

    def adapted():
        comps = load(chroma["folder"])
        comps.denoiser.requires_grad_(False)
        add_lora(comps.denoiser, 4, 4, 0.0, CHROMA.lora_target_names(comps.denoiser, NetworkConfig()))
        return comps

    stored, rounded = adapted(), adapted()
    saved = store_in_fp8(stored.denoiser, torch.float32, block_lists=BLOCKS)
    dtypes = {n: p.dtype for n, p in stored.denoiser.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.base_layer.weight"] == torch.float8_e4m3fn
    assert dtypes["single_transformer_blocks.0.proj_mlp.base_layer.weight"] == torch.float8_e4m3fn
    assert dtypes["single_transformer_blocks.0.attn.to_q.lora_A.default.weight"] == torch.float32
    assert dtypes["x_embedder.weight"] == dtypes["context_embedder.weight"] == torch.float32 and saved > 0
    with torch.no_grad():  # the same weights rounded to fp8, kept in fp32: what fp8 storage must compute
        for name, p in rounded.denoiser.named_parameters():
            if dtypes[name] == torch.float8_e4m3fn:
                p.copy_(p.to(torch.float8_e4m3fn).float())
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        cond, t = cond_of(rounded, "the cat"), torch.tensor([0.5])
        torch.testing.assert_close(CHROMA.predict(stored, x, t, cond, None), CHROMA.predict(rounded, x, t, cond, None),
                                   rtol=1e-5, atol=1e-5)


def test_checkpointing_and_block_swap_give_the_same_values_and_gradients_for_unequal_captions(chroma):
    """diffusers leaves the mask out of its checkpointed single blocks; predict hands it back (record.py)."""
    from engine.models.block_swap import swap_blocks
    from engine.models.lora import add_lora

    def run(checkpointing: bool, swap: bool):
        comps = load(chroma["folder"])
        tr = comps.denoiser
        tr.requires_grad_(False)
        torch.manual_seed(0)
        params = add_lora(tr, 4, 4, 0.0, CHROMA.lora_target_names(tr, NetworkConfig()))
        with torch.no_grad():
            for p in params:
                p.normal_()
        if checkpointing:
            tr.enable_gradient_checkpointing()
        tr.train()
        swapper = swap_blocks(tr, 2, "cpu", BLOCKS) if swap else None
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        out = CHROMA.predict(comps, x, torch.tensor([0.3, 0.6]), cond_of(comps, "the cat", "a cat on a red mat"), None)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in params], swapper

    plain, plain_grads, _ = run(False, False)
    same = lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-5)  # noqa: E731  (CPU kernels' summation order)
    for checkpointing, swap in ((True, False), (True, True)):
        out, grads, swapper = run(checkpointing, swap)
        assert same(plain, out) and all(same(a, b) for a, b in zip(plain_grads, grads)), (checkpointing, swap)
    assert len(swapper.blocks) == 2 and all(p.requires_grad is False for pairs in swapper.store for p, _ in pairs)


# ---------------------------------------------------------------------------------------------- will it fit

def test_the_known_layout_is_diffusers_own_and_the_files_count_as_the_folder(chroma):
    from accelerate import init_empty_weights
    from diffusers import ChromaTransformer2DModel

    from engine.models.families.chroma.memory import LAYOUT, chroma_tensors
    from engine.models.fit.headers import component_from_tensors
    from engine.models.fit.sizes import model_sizes

    with init_empty_weights():
        model = ChromaTransformer2DModel()  # Chroma1-HD's config is diffusers' default
    layout = chroma_tensors()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: s for k, (s, _) in layout.items()}
    assert component_from_tensors("transformer", layout, "", LAYOUT).params == 8_899_983_424
    hub = model_sizes(ModelConfig(family="chroma", path="lodestones/Chroma1-HD"))
    assert hub.denoiser.params == 8_899_983_424 and hub.components["text_encoder"].params == 4_762_310_656
    f = chroma["files"]
    folder = model_sizes(ModelConfig(family="chroma", path=str(chroma["folder"])))
    files = model_sizes(ModelConfig(family="chroma", path=str(f["transformer"]), t5_path=str(f["t5"]),
                                    vae_path=str(f["ae"]), single_file_config=str(f["config"])))
    assert not folder.notes and not files.notes
    for name in ("transformer", "text_encoder", "vae"):
        assert folder.components[name].params == files.components[name].params, name
    assert len(files.denoiser.blocks) == 2 and files.denoiser.doubles == 1
