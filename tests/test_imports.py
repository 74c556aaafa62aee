"""Other trainers' config files as Easel presets (engine/config/imports/): EveryDream2's train.json (the shipped
example and its side files), every FluxFlow optimizer/scheduler example of the guide, a kohya_ss GUI preset; every
key becomes an Easel key or is listed, and `python -m engine import` writes a preset that loads back the same."""
import json
import os
import re
import subprocess
import sys


from engine.config.load import import_notes, load_preset, preset_from_dict
from engine.runs import PROJECT_ROOT

ED2 = PROJECT_ROOT / "presets" / "everydream2-train.json"
FLUXFLOW_GUIDE = PROJECT_ROOT.parent / "shared" / "seeds" / "fluxflow-optimizers-and-schedulers.md"
# the guide's JSON examples, in order (tests/fluxflow_guide_examples.json; checked against the guide where it is)
EXAMPLES = PROJECT_ROOT / "tests" / "fluxflow_guide_examples.json"


def test_the_shipped_everydream2_train_json_trains_as_its_guide_says():
    preset = load_preset(ED2)
    assert preset.model.family == "sd15" and preset.model.path == "sd_v1-5_vae" and preset.network.type == "full"
    t, o = preset.training, preset.output
    assert (t.max_steps, t.max_epochs, t.batch_size, t.seed) == (0, 50, 6, 555)
    assert preset.optimizers["unet"].lr == 3e-6 and preset.schedules["unet"].type == "constant"
    assert preset.sampling.every_n_steps == 200 and o.save_every_n_minutes == 10 and o.run_name == "myproj"
    assert preset.dataset.caption_dropout == 0.04 and t.noise_offset == 0.02 and preset.network.train_text_encoder
    fmt, unmapped = import_notes(ED2)
    assert fmt == "EveryDream2 train.json" and unmapped == []  # every key of the example has an Easel meaning


def test_everydream2_side_files_and_keys_without_meaning_are_read_or_listed(tmp_path):
    (tmp_path / "sample_prompts.txt").write_text("a photo of ohwx\n\nohwx on a beach\n", encoding="utf-8")
    (tmp_path / "validation_default.json").write_text(json.dumps(
        {"validate_training": True, "val_split_mode": "automatic", "val_split_proportion": 0.15,
         "stabilize_training_loss": False}), encoding="utf-8")
    (tmp_path / "optimizer.json").write_text(json.dumps(
        {"base": {"optimizer": "adamw8bit", "lr": 2e-6, "betas": [0.9, 0.999], "weight_decay": 0.01}}),
        encoding="utf-8")
    data = {**json.loads(ED2.read_text(encoding="utf-8")), "resume_ckpt": "SD21", "sample_prompts":
            "sample_prompts.txt", "validation_config": "validation_default.json", "optimizer_config": "optimizer.json",
            "gpuid": 1, "rectified_flow": True, "reflow_steps": 2, "wandb": True}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    preset = load_preset(path)
    assert preset.model.family == "sd2" and preset.training.objective == "flow" and preset.training.reflow_steps == 2
    assert preset.sampling.prompts == ["a photo of ohwx", "ohwx on a beach"]
    assert preset.validation.fraction == 0.15
    assert preset.optimizers["unet"].type == "adamw8bit" and preset.optimizers["unet"].lr == 2e-6
    _, unmapped = import_notes(path)
    named = {line.split(" ")[0].split(":")[-1] for line in unmapped}
    assert {"gpuid", "wandb"} <= named and "reflow_steps" not in named
    assert any("stabilize_training_loss" in line for line in unmapped)


def guide_json_blocks() -> list[dict]:
    blocks = json.loads(EXAMPLES.read_text(encoding="utf-8"))
    if FLUXFLOW_GUIDE.is_file():  # a developer's checkout has the guide beside it: the copy must still match
        text = FLUXFLOW_GUIDE.read_text(encoding="utf-8")
        assert blocks == [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]
    return blocks


def test_every_fluxflow_example_of_the_guide_loads():
    blocks = guide_json_blocks()
    complete = [b for b in blocks if "optimizers" in b]
    singles = [b for b in blocks if "type" in b]
    assert len(complete) >= 4 and len(singles) >= 10
    for block in complete:
        fmt_notes = preset_from_dict(_converted(block))  # loads without a problem
        assert fmt_notes.optimizers
    vae_hq = _converted(complete[0])
    assert vae_hq["training"]["mode"] == "vae" and vae_hq["vae"]["gan"] is True
    preset = preset_from_dict(vae_hq)
    assert preset.optimizers["discriminator"].params["betas"] == [0.0, 0.9]
    assert preset.optimizers["discriminator"].params["amsgrad"] is True
    for block in singles:  # each scheduler example, as the flow component's schedule
        preset_from_dict(_converted({"schedulers": {"flow": block}}))


def _converted(block: dict) -> dict:
    from engine.config.imports import imported

    found = imported(block)
    assert found is not None and found.format == "FluxFlow optim_sched_config"
    return found.data


KOHYA = {"LoRA_type": "Standard", "adaptive_noise_scale": 0.00375, "bucket_reso_steps": 64, "cache_latents": True,
         "caption_extension": ".txt", "clip_skip": "1", "enable_bucket": True, "epoch": 160, "flip_aug": False,
         "gradient_accumulation_steps": 1, "gradient_checkpointing": True, "learning_rate": 0.0001,
         "lr_scheduler": "constant", "lr_warmup": 10, "max_bucket_reso": 2048, "max_resolution": "1024,1024",
         "max_timestep": 900, "max_train_steps": "320", "min_bucket_reso": 256, "min_snr_gamma": 5,
         "mixed_precision": "bf16", "network_alpha": 32, "network_dim": 32, "noise_offset": 0.0375,
         "optimizer": "AdamW8bit", "optimizer_args": "weight_decay=0.05 betas=0.9,0.99", "save_every_n_epochs": 5,
         "save_precision": "bf16", "sdxl": True, "seed": "12345", "text_encoder_lr": 0.0, "train_batch_size": 4,
         "unet_lr": 0.0001, "xformers": "xformers", "sample_prompts": "ohwx woman, portrait --n blurry --w 1024"}


def test_a_kohya_ss_gui_preset_converts_and_lists_what_easel_has_not(tmp_path):
    concept = tmp_path / "img" / "10_ohwx woman"
    concept.mkdir(parents=True)
    path = tmp_path / "kohya preset.json"
    path.write_text(json.dumps({**KOHYA, "train_data_dir": str(tmp_path / "img")}), encoding="utf-8")
    preset = load_preset(path)
    assert preset.model.family == "sdxl" and preset.network.rank == 32 and preset.network.alpha == 32
    assert preset.training.max_steps == 320 and preset.training.batch_size == 4 and preset.training.seed == 12345
    assert preset.dataset.path == str(concept) and preset.dataset.repeats == 10
    assert preset.dataset.resolution_px == 1024 and preset.dataset.min_bucket_px == 256
    assert preset.optimizers["unet"].type == "adamw8bit" and preset.optimizers["unet"].params["weight_decay"] == 0.05
    assert preset.optimizers["unet"].params["betas"] == [0.9, 0.99]
    assert preset.schedules["unet"].warmup_steps == 32  # 10 % of 320 steps
    assert not preset.network.train_text_encoder  # text_encoder_lr 0: the UNet only
    assert preset.sampling.prompts == ["ohwx woman, portrait"]
    _, unmapped = import_notes(path)
    named = {line.split(" = ")[0] for line in unmapped}
    assert {"adaptive_noise_scale", "max_timestep", "xformers"} <= named


def test_the_import_command_writes_a_preset_that_loads_back_the_same(tmp_path):
    out = subprocess.run([sys.executable, "-m", "engine", "import", str(ED2), "--set", "dataset.path=/data/set"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, encoding="utf-8", timeout=120,
                         env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# converted by Easel from everydream2-train.json (EveryDream2 train.json)")
    saved = tmp_path / "preset.yaml"
    saved.write_text(out.stdout, encoding="utf-8")
    assert load_preset(saved) == load_preset(ED2, ["dataset.path=/data/set"])


def test_training_straight_from_a_foreign_config_says_what_was_not_converted(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({**json.loads(ED2.read_text(encoding="utf-8")), "gpuid": 1}), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "engine", "train", str(path), "--dry-run"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, encoding="utf-8", timeout=120,
                         env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert "read as an EveryDream2 train.json; not converted (1):" in out.stderr
    assert "gpuid = 1: choose the GPU with CUDA_VISIBLE_DEVICES" in out.stderr


def test_every_everydream2_command_of_its_guide_loads():
    """The guide's `python train.py --...` examples (tests/everydream2_guide_examples.json: the arguments as
    train.json keys, as EveryDream2 reads them) load; its rectified-flow examples train flow, with reflow."""
    commands = json.loads((PROJECT_ROOT / "tests" / "everydream2_guide_examples.json").read_text(encoding="utf-8"))
    assert len(commands) == 6
    from engine.config.imports import imported

    presets = []
    for args in commands:
        found = imported(args) if "data_root" in args or "resume_ckpt" in args else None
        if found is None:  # `--config train.json` alone: the file is the shipped example
            continue
        presets.append(preset_from_dict(found.data))
    assert len(presets) == 5
    assert presets[1].model.family == "sd2" and presets[1].dataset.resolution_px == 640  # 512-base-ema
    assert presets[2].schedules["unet"].lr_decay_steps == 1500 and presets[2].model.family == "sd2"  # SD21
    assert presets[4].training.objective == "flow" and presets[4].training.reflow_steps == 2
    assert presets[4].training.reflow_gen_batches == 10
