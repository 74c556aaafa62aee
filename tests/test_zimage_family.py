"""Z-Image end to end on a tiny random Z-Image (Qwen3 text encoder included) built on disk in both layouts a user
has: a diffusers folder, and the ComfyUI files (the transformer in its original fused-qkv layout, qwen_3_4b, ae, and
a config folder). Training goes through the 12 GB tier preset with the environment variables, as a user runs it."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config.load import load_preset
from engine.config.schema import ModelConfig, NetworkConfig
from engine.failures import UserError
from engine.models.families.zimage.files import write_zimage_files
from engine.runs import create_run_dir
from dataset_factory import make_clean_dataset
from run_control import stop_then_resume
from support.runs import train_run

PRESET = "presets/zimage-lora-12gb.yaml"
FAST = ["schedules.unet.warmup_steps=0", "optimizers.unet.type=adamw", "optimizers.unet.lr=1e-3",
        "sampling.steps=2", "sampling.prompts=[ohwx portrait]", "sampling.strengths=[0.0, 1.0]",
        "output.save_every_n_steps=0", "output.formats=[kohya, diffusers]", "training.precision=fp32"]
RUN_NAME = "zimage-lora-12gb"


@pytest.fixture(scope="module")
def zimage(tmp_path_factory, tiny_model):
    """{"folder": the diffusers folder, "files": the ComfyUI files, "turbo": another tiny Z-Image named as Turbo,
    "data": a 6-image dataset}."""
    from engine.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("z-image models ü")
    folder = tiny_model("zimage")
    files = write_zimage_files(folder, root / "comfyui")
    turbo = build_tiny("zimage", root / "Z-Image-Turbo", seed=7)
    data = root / "subject"
    make_clean_dataset(data, n=6, trigger="ohwx", sizes=((64, 64), (64, 96), (96, 64)))
    return {"folder": folder, "files": files, "turbo": turbo, "data": data, "root": root}


def env_for(z, layout: str, out, steps: int = 20) -> dict:
    env = {"DATA_DIR": str(z["data"]), "MAX_STEPS": str(steps), "RESOLUTION": "64", "MIN_BUCKET_RESO": "64",
           "MAX_BUCKET_RESO": "96", "OUT_DIR": str(out), "RANK": "4", "ALPHA": "4"}
    env["MODEL_PATH"] = str(z["folder"] if layout == "folder" else z["files"]["transformer"])
    return env


def file_overrides(z, layout: str) -> list:
    if layout == "folder":
        return []
    f = z["files"]
    return [f"model.text_encoder_path={f['text_encoder']}", f"model.vae_path={f['ae']}",
            f"model.single_file_config={f['config']}"]


def zimage_run(z, layout, tmp_path, *overrides, steps=20):
    return train_run(PRESET, tmp_path / "runs", *FAST, *file_overrides(z, layout), *overrides,
                     env=env_for(z, layout, tmp_path / "runs", steps))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


# ---------------------------------------------------------------------------------------------- the layouts

def test_the_comfyui_files_load_the_same_weights_as_the_folder(zimage):
    from engine.models.families.zimage.record import load

    f = zimage["files"]
    folder = load(ModelConfig(family="zimage", path=str(zimage["folder"])), torch.float32, "cpu")
    files = load(ModelConfig(family="zimage", path=str(f["transformer"]), text_encoder_path=str(f["text_encoder"]),
                             vae_path=str(f["ae"]), single_file_config=str(f["config"])), torch.float32, "cpu")
    for part in ("transformer", "text_encoder", "vae"):
        a, b = getattr(folder.pipe, part).state_dict(), getattr(files.pipe, part).state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), part


def test_the_original_layout_matches_diffusers_converter_at_full_width():
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    from engine.models.families.zimage.names import diffusers_to_original, original_to_diffusers

    with torch.device("meta"):  # the real width and heads, no memory used
        big = ZImageTransformer2DModel(n_layers=1, n_refiner_layers=1)
    original = diffusers_to_original(big.state_dict())
    assert "layers.0.attention.qkv.weight" in original and "x_embedder.weight" in original
    reference = convert_z_image_transformer_checkpoint_to_diffusers({f"model.diffusion_model.{k}": v
                                                                     for k, v in original.items()})
    ours = original_to_diffusers({f"model.diffusion_model.{k}": v for k, v in original.items()})
    assert set(ours) == set(reference) == set(big.state_dict())
    assert all(ours[k].shape == reference[k].shape for k in ours)


@pytest.mark.parametrize("key, value, words", [
    ("model.path", "text_encoder", ["model.path", "Qwen3", "model.text_encoder_path"]),
    ("model.text_encoder_path", "ae", ["model.text_encoder_path", "autoencoder", "model.vae_path"]),
    ("model.vae_path", "transformer", ["model.vae_path", "Z-Image transformer", "model.path"]),
    ("model.text_encoder_path", "missing", ["model.text_encoder_path", "no such file"]),
])
def test_a_file_of_the_wrong_kind_names_the_key_and_where_it_belongs(zimage, key, value, words):
    from engine.models.families.zimage.record import load

    f = zimage["files"]
    paths = {"model.path": f["transformer"], "model.text_encoder_path": f["text_encoder"], "model.vae_path": f["ae"]}
    paths[key] = zimage["root"] / "nope.safetensors" if value == "missing" else f[value]
    cfg = ModelConfig(family="zimage", path=str(paths["model.path"]),
                      text_encoder_path=str(paths["model.text_encoder_path"]), vae_path=str(paths["model.vae_path"]),
                      single_file_config=str(f["config"]))
    with pytest.raises(UserError) as info:
        load(cfg, torch.float32, "cpu")
    text = str(info.value) + " " + info.value.hint
    assert all(w in text for w in words), text


def test_single_files_without_their_partners_or_configs_say_which(zimage):
    from engine.models.families.zimage.record import load

    f = zimage["files"]
    bare = f["config"].parent / "bare config"
    import shutil
    shutil.copytree(f["config"], bare, dirs_exist_ok=True)
    with pytest.raises(UserError, match="model.text_encoder_path is empty") as info:
        load(ModelConfig(family="zimage", path=str(f["transformer"]), vae_path=str(f["ae"]),
                         single_file_config=str(bare)), torch.float32, "cpu")
    assert "qwen_3_4b.safetensors" in info.value.hint and "text_encoders" in info.value.hint
    with pytest.raises(UserError, match="model.single_file_config is empty"):
        load(ModelConfig(family="zimage", path=str(f["transformer"])), torch.float32, "cpu")


def test_a_folder_model_takes_a_separate_text_encoder_file_and_a_hub_id_asks_for_its_configs_first(zimage):
    """A fine-tuned qwen_3_4b.safetensors beside the diffusers folder replaces the folder's; beside a Hub id it needs
    model.single_file_config, said before any weight is read."""
    from engine.models.families.zimage.record import load

    f = zimage["files"]
    comps = load(ModelConfig(family="zimage", path=str(zimage["folder"]), text_encoder_path=str(f["text_encoder"])),
                 torch.float32, "cpu")
    assert comps.text_encoders[0] is comps.pipe.text_encoder
    progress = []
    with pytest.raises(UserError, match="model.single_file_config is empty"):
        load(ModelConfig(family="zimage", path="Tongyi-MAI/Z-Image", text_encoder_path=str(f["text_encoder"])),
             torch.float32, "cpu", lambda text, n, total: progress.append(text))
    assert progress == []


# ---------------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("layout", ["folder", "files"])
def test_the_12gb_preset_trains_20_steps_and_its_lora_loads_everywhere(zimage, tmp_path, layout):
    run_dir, code, events = zimage_run(zimage, layout, tmp_path)
    assert code == 0, events[-1]
    steps = [e for e in events if e["kind"] == "step"]
    assert len(steps) == 20 and all(math.isfinite(e["loss"]) for e in steps)
    texts = [e["text"] for e in events if e["kind"] == "status"]
    assert "Storing the transformer in fp8, block by block" in texts       # the preset's fp8 base, on the CPU
    if layout == "files":  # a 12 GB file is read block by block, with n/N progress
        reads = [(e["n"], e["total"]) for e in events if e["kind"] == "status" and e["text"].startswith("Reading")]
        assert reads[-1] == (3, 3) and len(reads) == 3
    assert {e["format"] for e in events if e["kind"] == "saved"} == {"kohya", "diffusers"}
    from safetensors import safe_open
    with safe_open(str(run_dir / f"{RUN_NAME}.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["modelspec.architecture"] == "Z-Image/lora" and "modelspec.prediction_type" not in meta
    assert "diffusion_model.layers.0.attention.to_q.lora_down.weight" in keys
    assert "diffusion_model.layers.0.attention.to_q.alpha" in keys
    assert not any(k.startswith("lora_unet_") for k in keys)  # kohya-flat names ComfyUI cannot place
    # both files, loaded by diffusers' own ZImagePipeline as a user's script would: every module lands
    from diffusers import ZImagePipeline
    from engine.models.lora_check import self_check
    pipe = ZImagePipeline.from_pretrained(zimage["folder"])
    for name in (f"{RUN_NAME}.safetensors", f"{RUN_NAME}.diffusers.safetensors"):
        report = self_check(run_dir / name, pipe)
        assert report.modules_loaded == report.modules_in_file == len(keys) // 3 > 0
    samples = {e["strength"]: e["path"] for e in events if e["kind"] == "sample"}
    assert np.abs(pixels(samples[0.0]) - pixels(samples[1.0])).mean() > 0.5  # the LoRA changes the picture


def test_previews_render_on_turbo_with_the_same_lora_at_its_own_steps(zimage, tmp_path):
    run_dir, code, events = zimage_run(zimage, "folder", tmp_path, f"model.preview_path={zimage['turbo']}",
                                       steps=12)
    assert code == 0, events[-1]
    samples = [e for e in events if e["kind"] == "sample"]
    preview = {e["strength"]: e["path"] for e in samples if os.path.basename(e["path"]).startswith("preview_")}
    base = {e["strength"]: e["path"] for e in samples if not os.path.basename(e["path"]).startswith("preview_")}
    assert sorted(preview) == sorted(base) == [0.0, 1.0]
    import json
    meta = json.loads(Image.open(preview[1.0]).info["easel"])
    assert meta["Steps"] == 8 and meta["CFG scale"] == 1.0 and meta["Model"] == "Z-Image-Turbo"
    assert np.abs(pixels(preview[0.0]) - pixels(preview[1.0])).mean() > 0.5   # the LoRA acts on Turbo too
    assert np.abs(pixels(preview[1.0]) - pixels(base[1.0])).mean() > 0.5      # and Turbo is another model


def test_training_turbo_itself_is_warned_with_what_works_instead(zimage):
    from engine.config.validate import advice

    preset = load_preset(PRESET, [f"model.path={zimage['turbo']}"])
    words = " ".join(m for k, m in advice(preset) if k == "model.path")
    assert "distill" in words and "Tongyi-MAI/Z-Image" in words and "model.preview_path" in words
    assert not [k for k, _ in advice(load_preset(PRESET, []))]  # the base, as the preset has it: nothing to say


def test_resume_equals_an_uninterrupted_zimage_run(zimage, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    straight, code, _ = zimage_run(zimage, "files", tmp_path / "a", steps=6)
    assert code == 0
    preset = load_preset(PRESET, [*FAST, *file_overrides(zimage, "files")],
                         env=env_for(zimage, "files", tmp_path, 6))
    stopped = create_run_dir(preset, root=tmp_path / "b")
    stop_then_resume(stopped, monkeypatch, 3)
    a = load_file(straight / f"{RUN_NAME}.diffusers.safetensors")
    b = load_file(stopped / f"{RUN_NAME}.diffusers.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_lora_lowers_the_denoising_loss_on_its_own_data_at_fixed_noise(zimage, tmp_path):
    """60 steps on 6 images, then the flow loss over those images at 8 fixed noise levels and draws, with the LoRA
    at strength 1 and at 0 (the base). The margin: the base's loss moves by about 2 % between noise draws (1.468 to
    1.495 over three seeds), and the trained LoRA measured 0.71-0.72 of the base on each; below 0.85 is learning,
    not a lucky draw."""
    from engine.models.families.zimage.record import encode_text, load, predict
    from engine.models.lora import add_lora, lora_file_info, load_lora_into
    from engine.sampling.render import lora_strength

    run_dir, code, events = zimage_run(zimage, "folder", tmp_path, "training.max_steps=60", steps=60)
    assert code == 0, events[-1]
    comps = load(ModelConfig(family="zimage", path=str(zimage["folder"])), torch.float32, "cpu")
    lora = run_dir / f"{RUN_NAME}.safetensors"
    info = lora_file_info(lora)
    tr = comps.denoiser
    from engine.models.families.zimage.record import lora_target_names
    add_lora(tr, info.rank, info.alpha, 0.0, lora_target_names(tr, NetworkConfig()))
    assert load_lora_into(tr, {}, lora) > 0
    images = sorted(p for p in zimage["data"].iterdir() if p.suffix in (".png", ".jpg"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = {0.0: [], 1.0: []}
        for path in images:
            caption = path.with_suffix(".txt").read_text(encoding="utf-8")
            image = Image.open(path).convert("RGB").resize((64, 64))
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            x0 = comps.vae.encode(x).latent_dist.mode()
            x0 = (x0 - comps.vae.config.shift_factor) * comps.vae.config.scaling_factor
            cond = encode_text(comps, [caption])
            for t in torch.linspace(0.1, 0.9, 8):
                noise = torch.randn(x0.shape, generator=generator)
                x_t = (1 - t) * x0 + t * noise
                for strength in losses:
                    with lora_strength(comps.pipe, strength):
                        v = predict(comps, x_t, t[None], cond, None)
                    losses[strength].append(torch.mean((v - (noise - x0)) ** 2).item())
    base, trained = np.mean(losses[0.0]), np.mean(losses[1.0])
    assert trained < 0.85 * base, (base, trained)


def test_rl_warms_up_then_trains_a_zimage_lora_with_guided_rollouts_and_a_kl(zimage, tmp_path):
    """training.mode rl on Z-Image as on FLUX: the supervised warmup, then guided flow-SDE rollouts scored by the
    reward, a KL to the LoRA-off reference, the LoRA saved and self-checked."""
    from engine.cli import _run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ohwx portrait\nohwx in a garden\n", encoding="utf-8")
    preset = load_preset(PRESET, [*FAST, "training.mode=rl", "rl.warmup_steps=2", "rl.rewards={brightness: 1.0}",
                                  "rl.num_images_per_prompt=2", "rl.num_inference_steps=4", "rl.guidance_scale=3.0",
                                  "training.batch_size=2", "rl.kl_beta=0.1", f"rl.prompts_file={prompts}",
                                  "training.max_steps=5"], env=env_for(zimage, "folder", tmp_path / "runs", 5))
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert _run(run_dir, resume=False) == 0
    from engine.events import read_all
    events = read_all(run_dir / "events.jsonl")
    assert not [e for e in events if e["kind"] == "error"]
    rl = [e for e in events if e["kind"] == "rl"]
    assert rl and all(math.isfinite(e["reward_mean"]) for e in rl)
    rl_steps = [e for e in events if e["kind"] == "step" and e["step"] > 2]
    assert rl_steps and all("kl" in e and e["kl"] >= 0 for e in rl_steps)
    assert (run_dir / f"{RUN_NAME}.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- the pieces

def test_block_swap_over_the_refiners_and_layers_computes_the_same_values_and_gradients(zimage):
    """Z-Image runs its blocks in three lists (noise refiner, context refiner, main layers: caps.block_lists); the
    swapped ones are the last that run, and the step is the same as without."""
    from engine.models.block_swap import swap_blocks
    from engine.models.families import capabilities
    from engine.models.families.zimage.record import encode_text, load, lora_target_names, predict
    from engine.models.lora import add_lora

    def run(swap: bool):
        comps = load(ModelConfig(family="zimage", path=str(zimage["folder"])), torch.float32, "cpu")
        tr = comps.denoiser
        tr.requires_grad_(False)
        torch.manual_seed(0)
        params = add_lora(tr, 4, 4, 0.0, lora_target_names(tr, NetworkConfig()))
        with torch.no_grad():
            for p in params:
                p.normal_(std=0.1)
            cond = encode_text(comps, ["ohwx portrait", "a longer caption of a cat"])
        tr.enable_gradient_checkpointing()
        tr.train()
        swapper = swap_blocks(tr, 2, "cpu", capabilities("zimage").block_lists) if swap else None
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        out = predict(comps, x, torch.tensor([0.3, 0.7]), cond, None)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in params], swapper

    plain, plain_grads, _ = run(False)
    swapped, swapped_grads, swapper = run(True)
    assert len(swapper.blocks) == 2 and swapper.blocks[-1] is not None
    same = lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-5)  # noqa: E731
    assert same(plain, swapped) and all(same(a, b) for a, b in zip(plain_grads, swapped_grads))


def test_captions_of_any_length_batch_together_and_predict_as_one_at_a_time(zimage):
    """Captions are cached padded to one length so they stack; predict drops the padding again, so a batch of two
    captions of different lengths gives what each gives alone."""
    from engine.models.families.zimage.record import encode_text, load, predict

    comps = load(ModelConfig(family="zimage", path=str(zimage["folder"])), torch.float32, "cpu")
    with torch.no_grad():
        cond = encode_text(comps, ["ohwx", "ohwx, a much longer caption with many more words in it"])
        assert cond["prompt_mask"][0].sum() < cond["prompt_mask"][1].sum()
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([0.4, 0.6])
        both = predict(comps, x, t, cond, None)
        alone = [predict(comps, x[i:i + 1], t[i:i + 1], {k: v[i:i + 1] for k, v in cond.items()}, None)
                 for i in range(2)]
    assert torch.allclose(both, torch.cat(alone), atol=1e-5)


def test_the_text_encoder_in_fp8_caches_nearly_the_same_states(zimage, tmp_path):
    """model.text_encoder_fp8 (the 8 GB tier): Qwen3's linears in fp8 while it encodes; the cached states stay
    close to bf16's (the cosine of each caption's states above 0.99)."""
    from engine.models.base_storage import store_in_fp8
    from engine.models.families.zimage.record import encode_text, load

    comps = load(ModelConfig(family="zimage", path=str(zimage["folder"])), torch.float32, "cpu")
    captions = ["ohwx portrait", "a cat on a windowsill"]
    with torch.no_grad():
        before = encode_text(comps, captions)
        saved = store_in_fp8(comps.text_encoders[0], torch.float32)
        after = encode_text(comps, captions)
    assert saved > 0
    mask = before["prompt_mask"]
    cos = torch.nn.functional.cosine_similarity(before["prompt_embeds"][mask].flatten(),
                                                after["prompt_embeds"][mask].flatten(), dim=0)
    assert 0.99 < cos < 1.0
