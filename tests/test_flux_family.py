"""FLUX.1 end to end on a tiny random FLUX built on disk in both layouts a user has: a diffusers folder, and the
ComfyUI files (BFL transformer + clip_l + t5xxl + ae + a config folder). Training goes through the FLUX identity
guide's preset and its environment variables, as the guide runs it."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config.load import load_preset
from engine.config.schema import ModelConfig, NetworkConfig
from engine.events import read_all
from engine.failures import UserError
from engine.models.families import capabilities
from engine.models.tiny import write_flux_files
from engine.runs import create_run_dir
from dataset_factory import make_clean_dataset
from run_control import stop_then_resume
from support.runs import train_run

FLUX_BLOCKS = capabilities("flux").block_lists

PRESET = "presets/flux-identity-fast.yaml"
FAST = ["schedules.unet.warmup_steps=0", "optimizers.unet.lr=1e-3", "training.grad_accum=1",
        "sampling.steps=2", "sampling.prompts=[ohwx portrait]", "output.save_every_n_steps=0"]


@pytest.fixture(scope="module")
def flux(tmp_path_factory, tiny_model):
    """{"folder": the diffusers folder, "files": the ComfyUI files, "data": a 6-image dataset}."""
    root = tmp_path_factory.mktemp("flux models ü")
    folder = tiny_model("flux")
    files = write_flux_files(folder, root / "comfyui")
    data = root / "subject"
    make_clean_dataset(data, n=6, trigger="ohwx", sizes=((64, 64), (64, 96), (96, 64)))
    return {"folder": folder, "files": files, "data": data, "root": root}


def env_for(flux, layout: str, out, steps: int = 20) -> dict:
    """The guide's variables (MODEL_PATH, DATA_DIR, ...) for a run on the tiny model in `layout`."""
    env = {"DATA_DIR": str(flux["data"]), "MAX_STEPS": str(steps), "RESOLUTION": "64", "MIN_BUCKET_RESO": "64",
           "MAX_BUCKET_RESO": "96", "OUT_DIR": str(out), "RANK": "4", "ALPHA": "4"}
    env["MODEL_PATH"] = str(flux["folder"] if layout == "folder" else flux["files"]["transformer"])
    return env


def file_overrides(flux, layout: str) -> list:
    if layout == "folder":
        return []
    f = flux["files"]
    return [f"model.clip_l_path={f['clip_l']}", f"model.t5_path={f['t5']}", f"model.vae_path={f['ae']}",
            f"model.single_file_config={f['config']}"]


def flux_run(flux, layout, tmp_path, *overrides, steps=20):
    return train_run(PRESET, tmp_path / "runs", *FAST, *file_overrides(flux, layout), *overrides,
                     env=env_for(flux, layout, tmp_path / "runs", steps))


# ---------------------------------------------------------------------------------------------- the BFL layout

def test_bfl_conversion_matches_diffusers_converter_at_full_width_and_round_trips():
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from engine.models.families.flux.bfl_names import bfl_to_diffusers, diffusers_to_bfl

    with torch.device("meta"):  # the real width (diffusers' converter hard-codes 3072), no memory used
        big = FluxTransformer2DModel(num_layers=2, num_single_layers=2)
    bfl = diffusers_to_bfl(big.state_dict())
    assert "double_blocks.1.img_attn.qkv.weight" in bfl and "single_blocks.1.linear1.weight" in bfl
    reference = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    ours = bfl_to_diffusers(bfl)
    assert set(ours) == set(reference) == set(big.state_dict())
    assert all(ours[k].shape == reference[k].shape for k in reference)

    small = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                   in_channels=16, joint_attention_dim=32, pooled_projection_dim=32,
                                   axes_dims_rope=[4, 4, 8])
    state = {k: torch.randn_like(v) for k, v in small.state_dict().items()}
    back = bfl_to_diffusers(diffusers_to_bfl(state))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def make_schnell(flux, folder):
    """The tiny dev model without its guidance embedding: what FLUX.1-schnell is to FLUX.1-dev."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(flux["folder"], folder)
    config = folder / "transformer" / "config.json"
    config.write_text(config.read_text(encoding="utf-8").replace('"guidance_embeds": true',
                                                                 '"guidance_embeds": false'), encoding="utf-8")
    weights = next((folder / "transformer").glob("*.safetensors"))
    save_file({k: v for k, v in load_file(weights).items() if "guidance_embedder" not in k}, str(weights))
    return folder


def test_dev_and_schnell_are_told_apart_by_the_guidance_embedding(flux, tmp_path):
    from safetensors import safe_open

    from engine.models.families.flux.record import load
    from engine.models.families.flux.bfl_names import is_schnell

    with safe_open(str(flux["files"]["transformer"]), "pt") as f:
        assert not is_schnell(f.keys())
    comps = load(ModelConfig(family="flux", path=str(flux["folder"])), torch.float32, "cpu")
    assert comps.extra["variant"] == "dev" and comps.extra["max_sequence_length"] == 512
    comps = load(ModelConfig(family="flux", path=str(make_schnell(flux, tmp_path / "schnell"))), torch.float32, "cpu")
    assert comps.extra["variant"] == "schnell" and comps.extra["max_sequence_length"] == 256


def test_a_dev_lora_continued_on_schnell_is_said_plainly(flux, tmp_path):
    dev_run, code, _ = flux_run(flux, "folder", tmp_path / "dev", steps=2)
    assert code == 0
    schnell = make_schnell(flux, tmp_path / "schnell")
    _, code, events = flux_run(flux, "folder", tmp_path / "schnell run", f"model.path={schnell}",
                               f"network.init_from={dev_run / 'flux-identity-fast.safetensors'}", steps=1)
    assert code == 0, events[-1]
    warnings = [e["message"] for e in events if e["kind"] == "warning"]
    assert any("trained on FLUX.1-dev, and this model is FLUX.1-schnell" in w for w in warnings), warnings


def test_the_comfyui_files_load_the_same_weights_as_the_folder_fp8_file_included(flux, tmp_path):
    from diffusers import FluxPipeline

    from engine.models.families.flux.loading import load_flux_pipeline

    f = flux["files"]
    fp8 = write_flux_files(flux["folder"], tmp_path / "fp8", transformer_dtype=torch.float8_e4m3fn)
    reference = FluxPipeline.from_pretrained(flux["folder"])
    for transformer, tolerance in ((f["transformer"], 0.0), (fp8["transformer"], 0.07)):
        cfg = ModelConfig(family="flux", path=str(transformer), clip_l_path=str(f["clip_l"]), t5_path=str(f["t5"]),
                          vae_path=str(f["ae"]), single_file_config=str(f["config"]))
        steps = []
        pipe = load_flux_pipeline(cfg, torch.float32, lambda text, n, total: steps.append((n, total)))
        assert steps[0] == (0, 4) and steps[-1] == (4, 4)  # progress per component
        for part in ("transformer", "text_encoder", "vae"):
            ours, theirs = getattr(pipe, part).state_dict(), getattr(reference, part).state_dict()
            assert set(ours) == set(theirs)
            worst = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in theirs)
            assert worst <= (tolerance if part == "transformer" else 0.0)
        t5_ours, t5_theirs = pipe.text_encoder_2.state_dict(), reference.text_encoder_2.state_dict()
        assert all(torch.allclose(t5_ours[k], t5_theirs[k].half().float()) for k in t5_theirs)  # the fp16 file


@pytest.mark.parametrize("key, value, words", [
    ("model.path", "t5", ["model.path", "T5-XXL", "model.t5_path"]),
    ("model.t5_path", "clip_l", ["model.t5_path", "CLIP-L", "model.clip_l_path"]),
    ("model.vae_path", "transformer", ["model.vae_path", "FLUX.1 transformer", "model.path"]),
    ("model.clip_l_path", "missing", ["model.clip_l_path", "no such file"]),
])
def test_a_file_of_the_wrong_kind_names_the_key_and_where_it_belongs(flux, key, value, words):
    from engine.models.families.flux.loading import load_flux_pipeline

    f = flux["files"]
    paths = {"model.path": f["transformer"], "model.clip_l_path": f["clip_l"], "model.t5_path": f["t5"],
             "model.vae_path": f["ae"]}
    chosen = {"t5": f["t5"], "clip_l": f["clip_l"], "transformer": f["transformer"],
              "missing": flux["root"] / "nope.safetensors"}
    paths[key] = chosen[value]
    cfg = ModelConfig(family="flux", path=str(paths["model.path"]), clip_l_path=str(paths["model.clip_l_path"]),
                      t5_path=str(paths["model.t5_path"]), vae_path=str(paths["model.vae_path"]),
                      single_file_config=str(f["config"]))
    with pytest.raises(UserError) as info:
        load_flux_pipeline(cfg, torch.float32, lambda *a: None)
    text = info.value.message + " " + info.value.hint
    assert all(w in text for w in words), text


def test_single_files_without_their_partners_or_configs_say_which(flux):
    from engine.models.families.flux.loading import load_flux_pipeline

    f = flux["files"]
    with pytest.raises(UserError, match="model.single_file_config is empty") as info:
        load_flux_pipeline(ModelConfig(family="flux", path=str(f["transformer"])), torch.float32, lambda *a: None)
    assert "tokenizer" in info.value.hint
    with pytest.raises(UserError, match="model.clip_l_path is empty") as info:
        load_flux_pipeline(ModelConfig(family="flux", path=str(f["transformer"]), single_file_config=str(f["config"])),
                           torch.float32, lambda *a: None)
    assert "clip_l.safetensors" in info.value.hint


# ---------------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("layout", ["folder", "files"])
def test_the_identity_fast_preset_trains_20_steps_and_its_lora_changes_the_image(flux, tmp_path, layout):
    run_dir, code, events = flux_run(flux, layout, tmp_path)
    assert code == 0, events[-1]
    steps = [e for e in events if e["kind"] == "step"]
    assert len(steps) == 20 and all(math.isfinite(e["loss"]) for e in steps)
    texts = [e["text"] for e in events if e["kind"] == "status"]
    assert "Storing the transformer in fp8, block by block" in texts       # the preset's fp8 base, on the CPU
    assert any(t.startswith("Transformer in fp8:") for t in texts)
    assert {e["format"] for e in events if e["kind"] == "saved"} == {"kohya", "diffusers"}
    from safetensors import safe_open
    with safe_open(str(run_dir / "flux-identity-fast.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["ss_base_model_version"] == "flux1" and meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_single_blocks_0_linear1.alpha" in keys and "modelspec.prediction_type" not in meta
    samples = {e["strength"]: e["path"] for e in events if e["kind"] == "sample"}
    assert sorted(samples) == [0.5, 0.8, 1.0, 1.2]
    weak, strong = (np.asarray(Image.open(samples[s]), dtype=np.int16) for s in (0.5, 1.2))
    assert np.abs(weak - strong).mean() > 0.5  # the LoRA's strength changes the picture


def test_resume_equals_an_uninterrupted_flux_run(flux, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    straight, code, _ = flux_run(flux, "files", tmp_path / "a", "training.max_steps=6", steps=6)
    assert code == 0
    preset = load_preset(PRESET, [*FAST, *file_overrides(flux, "files")], env=env_for(flux, "files", tmp_path, 6))
    stopped = create_run_dir(preset, root=tmp_path / "b")
    stop_then_resume(stopped, monkeypatch, 3)
    a = load_file(straight / "flux-identity-fast.diffusers.safetensors")
    b = load_file(stopped / "flux-identity-fast.diffusers.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_text_embeddings_are_cached_on_disk_and_reused(flux, tmp_path):
    from engine.data.cache import cache_text

    calls = []

    def encode(captions):
        calls.append(list(captions))
        return {"prompt_embeds": torch.randn(len(captions), 5, 3), "pooled": torch.randn(len(captions), 4)}

    first = cache_text(["a", "b", "a"], encode, lambda n, t: None, cache_dir=tmp_path / "text", encoder_id="x")
    second = cache_text(["a", "b"], encode, lambda n, t: None, cache_dir=tmp_path / "text", encoder_id="x")
    assert calls == [["a", "b"]]
    assert all(torch.equal(first[c][k], second[c][k]) for c in "ab" for k in first[c])
    cache_text(["a"], encode, lambda n, t: None, cache_dir=tmp_path / "text", encoder_id="other T5")
    assert calls[-1] == ["a"]  # another encoder (or T5 length) never reuses these files


def test_int8_and_nf4_without_cuda_say_so_before_loading(flux, tmp_path):
    _, code, events = flux_run(flux, "folder", tmp_path, "model.quantize_base=nf4")
    assert code == 1
    error = events[-1]
    assert error["kind"] == "error" and "NVIDIA GPU" in error["message"] and "fp8" in error["hint"]
    assert not any(e["kind"] == "status" and e.get("phase") == "loading" for e in events)


# ---------------------------------------------------------------------------------------------- the pieces

def test_fp8_storage_keeps_the_lora_in_fp32_and_computes_like_the_rounded_weights(flux):
    from engine.models.base_storage import store_in_fp8
    from engine.models.families.flux.record import lora_target_names, load, predict
    from engine.models.lora import add_lora

    comps = load(ModelConfig(family="flux", path=str(flux["folder"])), torch.float32, "cpu")
    tr = comps.denoiser
    tr.requires_grad_(False)
    targets = lora_target_names(tr, NetworkConfig())
    add_lora(tr, 4, 4, 0.0, targets)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = {"prompt_embeds": torch.randn(1, 7, 32), "pooled": torch.randn(1, 32)}
    t = torch.tensor([0.5])
    with torch.no_grad():  # the same weights rounded to fp8, kept in fp32: what fp8 storage must compute
        for name, p in tr.named_parameters():
            if ".lora_" not in name and "transformer_blocks" in name:
                p.copy_(p.to(torch.float8_e4m3fn).float())
        expected = predict(comps, x, t, cond, None)
    saved = store_in_fp8(tr, torch.float32, block_lists=FLUX_BLOCKS)
    dtypes = {n: p.dtype for n, p in tr.named_parameters()}
    assert dtypes["transformer_blocks.0.norm1.linear.weight"] == torch.float8_e4m3fn      # modulation too
    assert dtypes["single_transformer_blocks.0.attn.to_q.base_layer.weight"] == torch.float8_e4m3fn
    assert dtypes["single_transformer_blocks.0.attn.to_q.lora_A.default.weight"] == torch.float32
    assert dtypes["x_embedder.weight"] == torch.float32 and saved > 0
    with torch.no_grad():
        assert torch.allclose(predict(comps, x, t, cond, None), expected, atol=1e-5)


def test_default_lora_targets_are_every_block_linear_but_modulation(flux):
    from engine.models.families.flux.record import lora_target_names, load

    tr = load(ModelConfig(family="flux", path=str(flux["folder"])), torch.float32, "cpu").denoiser
    names = lora_target_names(tr, NetworkConfig())
    assert len(names) == 12 + 5 and "transformer_blocks.0.attn.to_add_out" in names
    assert "single_transformer_blocks.0.proj_out" in names and "proj_out" not in names  # not the final layer
    assert not any("norm" in n for n in names)
    with_mod = lora_target_names(tr, NetworkConfig(lora_modulation=True))
    assert {"transformer_blocks.0.norm1.linear", "single_transformer_blocks.0.norm.linear"} < set(with_mod)
    attention = lora_target_names(tr, NetworkConfig(targets=["to_q", "to_k", "to_v"]))
    assert len(attention) == 6


def test_block_swap_computes_the_same_values_and_gradients_and_moves_only_frozen_weights(flux):
    from engine.models.block_swap import swap_blocks
    from engine.models.families.flux.record import lora_target_names, load, predict
    from engine.models.lora import add_lora

    def run(swap: bool):
        comps = load(ModelConfig(family="flux", path=str(flux["folder"])), torch.float32, "cpu")
        tr = comps.denoiser
        tr.requires_grad_(False)
        torch.manual_seed(0)
        params = add_lora(tr, 4, 4, 0.0, lora_target_names(tr, NetworkConfig()))
        with torch.no_grad():
            for p in params:
                p.normal_()
        tr.enable_gradient_checkpointing()
        tr.train()
        swapper = swap_blocks(tr, 2, "cpu", FLUX_BLOCKS) if swap else None
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        cond = {"prompt_embeds": torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1)),
                "pooled": torch.randn(1, 32, generator=torch.Generator().manual_seed(2))}
        out = predict(comps, x, torch.tensor([0.3]), cond, None)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in params], swapper

    plain, plain_grads, _ = run(False)
    swapped, swapped_grads, swapper = run(True)
    assert len(swapper.blocks) == 2 and all(p.requires_grad is False for pairs in swapper.store for p, _ in pairs)
    # equal up to float rounding: the copied weights sit at other addresses, and the CPU's matmul kernels sum in
    # an order that depends on alignment (differences of 1e-6 on values of about 1)
    same = lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-5)  # noqa: E731
    assert same(plain, swapped) and all(same(a, b) for a, b in zip(plain_grads, swapped_grads))


def test_flux_timestep_sampling_matches_the_closed_forms():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from engine.training.objectives import Flow, flux_shift_of, shift_t

    assert shift_t(torch.tensor([0.5]), 3.0).item() == pytest.approx(0.75)
    for tokens in (256, 1024, 4096):
        assert math.log(flux_shift_of(tokens)) == pytest.approx(calculate_shift(tokens))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sigmoid = Flow("sigmoid").sample_t(4000, g())
    shifted = Flow("shift", discrete_flow_shift=3.1582).sample_t(4000, g())
    assert torch.allclose(shifted, shift_t(sigmoid, 3.1582).clamp(1e-4, 1 - 1e-4))
    small, large = (Flow("flux_shift").sample_t(4000, g(), image_tokens=n).mean() for n in (256, 4096))
    assert 0.45 < sigmoid.mean() < 0.55 and small < large  # bigger images train at higher noise


def test_the_guides_two_phases_by_hand_carry_the_text_encoder_lora_frozen_into_phase_2(flux, tmp_path, monkeypatch):
    """ENABLE_TE=1 MAX_STEPS=… for phase 1, then ENABLE_TE=0 RESUME_FROM=phase1.safetensors (the FLUX guide)."""
    from safetensors.torch import load_file

    from engine.cli import train as cli_train

    def phase(out, **env):
        for key, value in {**env_for(flux, "folder", out, steps=3), **env}.items():
            monkeypatch.setenv(key, value)
        assert cli_train([PRESET, *[a for o in FAST for a in ("--set", o)]]) == 0
        (run_dir,) = out.iterdir()
        return run_dir

    one = phase(tmp_path / "phase1", ENABLE_TE="1")
    first = load_file(one / "flux-identity-fast.safetensors")
    te_keys = {k for k in first if k.startswith("lora_te1_")}
    assert te_keys, "phase 1 trained CLIP-L"
    two = phase(tmp_path / "phase2", ENABLE_TE="0", RESUME_FROM=str(one / "flux-identity-fast.safetensors"))
    events = read_all(two / "events.jsonl")
    assert any("carried into this run's files" in e.get("message", "") for e in events)
    second = load_file(two / "flux-identity-fast.safetensors")
    assert set(second) == set(first)
    assert all(torch.equal(first[k], second[k]) for k in te_keys)                  # frozen, carried unchanged
    assert any(not torch.equal(first[k], second[k]) for k in set(first) - te_keys)  # the transformer trained on


def test_a_flux_lora_run_with_a_validation_split_keeps_its_best_files(flux, tmp_path):
    run_dir, code, events = flux_run(flux, "files", tmp_path, "validation.fraction=0.34", "validation.keep_best=1",
                                     "output.save_every_n_steps=2", steps=4)
    assert code == 0, events[-1]
    vals = [e for e in events if e["kind"] == "val"]
    assert [e["step"] for e in vals] == [2, 4]
    assert any("2 held-out image(s), 4 to train on" in e.get("text", "") for e in events)
    best = sorted(p.name for p in (run_dir / "checkpoints" / "best").iterdir())
    loss = min(e["val_loss"] for e in vals)
    assert any(f"val_loss{loss:.4f}.safetensors" in name for name in best)            # kohya, self-checked
    assert any(name.endswith(f"val_loss{loss:.4f}.diffusers.safetensors") for name in best)
