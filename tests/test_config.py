"""The preset schema: strict loading, every kind of error at once, overrides, environment variables, JSON, saving."""
import json

import pytest

from engine.config.fields import iter_fields
from engine.config.load import ConfigError, env_overrides, load_preset, preset_from_dict
from engine.config.save import dump_preset, preset_to_dict, save_preset
from engine.config.schema import CURRENT_VERSION, Preset


def problems_of(data, overrides=(), env=None) -> dict:
    with pytest.raises(ConfigError) as info:
        preset_from_dict(data, overrides, env)
    return dict(info.value.problems)


def test_empty_preset_is_the_defaults():
    assert preset_from_dict({}) == Preset()


def test_the_issue_example_names_all_three_problems_with_suggestions(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  family: sdx\ntraining:\n  batch_size: -1\ntrainng:\n  max_steps: 10\n", "utf-8")
    with pytest.raises(ConfigError) as info:
        load_preset(path)
    text = str(info.value)
    assert "model.family: 'sdx' is not one of sd15, sd2, sdxl, flux, flux2, zimage, chroma, dit (did you mean 'sdxl'?)" in text
    assert "training.batch_size: -1 is out of range; allowed 1..512" in text
    assert "trainng: unknown key (did you mean 'training'?)" in text
    assert str(path) in text


@pytest.mark.parametrize("data, key, words", [
    ({"dataset": {"resolution": 512}}, "dataset.resolution", "did you mean 'resolution_px'"),
    ({"training": {"seed": "abc"}}, "training.seed", "not a whole number"),
    ({"training": {"gradient_checkpointing": "maybe"}}, "training.gradient_checkpointing", "true or false"),
    ({"training": "fast"}, "training", "must be a section"),
    ({"output": {"formats": ["kohya", "ckpt"]}}, "output.formats[1]", "not one of kohya, diffusers"),
    ({"optimizers": {"unett": {"lr": 1e-4}}}, "optimizers.unett", "did you mean 'unet'"),
    ({"optimizers": {"unet": {"type": "sgd", "betas": [0.9, 0.9]}}}, "optimizers.unet.betas", "not a parameter of sgd"),
    ({"schedules": {"unet": {"type": "StepLR", "gama": 0.5}}}, "schedules.unet.gama", "did you mean 'gamma'"),
    ({"schedules": {"unet": {"type": "cosinee"}}}, "schedules.unet.type", "did you mean 'cosine'"),
    ({"network": {"te_two_phase": True}}, "network.te_two_phase", "train_text_encoder"),
    ({"model": {"family": "flux"}, "training": {"objective": "epsilon"}}, "training.objective", "use 'flow'"),
    ({"training": {"timestep_sampling": "flux_shift"}}, "training.timestep_sampling", "flow"),
    ({"training": {"flow_path": "cosine"}}, "training.flow_path", "from scratch"),
    # samplers the family cannot sample with: refused with its list (they used to pass and fail at the first sample)
    ({"sampling": {"sampler": "rk4"}}, "sampling.sampler", "use one of default, euler, ddim, dpmpp_2m"),
    ({"model": {"prediction_type": "epsilon"}, "sampling": {"sampler": "flow_euler"}}, "sampling.sampler",
     "an SD 1.x model trained with objective 'epsilon': use one of default, euler, ddim, dpmpp_2m"),
    ({"model": {"family": "sdxl"}, "sampling": {"sampler": "ddpm"}}, "sampling.sampler", "an SDXL model"),
    ({"model": {"family": "flux"}, "sampling": {"sampler": "ddim"}}, "sampling.sampler",
     "use one of default, flow_euler"),
    ({"model": {"family": "dit", "path": ""}, "network": {"type": "full"}, "training": {"objective": "epsilon"},
      "sampling": {"sampler": "rk4"}}, "sampling.sampler", "a DiT model trained with objective 'epsilon': use one "
                                                            "of default, ddim, ddpm"),
    ({"validation": {"fraction": 0.9}}, "validation.fraction", "out of range"),
    ({"model": {"t5_path": "t5xxl_fp16.safetensors"}}, "model.t5_path", "FLUX"),
    ({"model": {"family": "flux", "block_swap": 8}, "training": {"gradient_checkpointing": False}},
     "model.block_swap", "gradient_checkpointing"),
    ({"training": {"max_steps": 0, "max_epochs": 0}}, "training.max_steps", "max_epochs"),
    ({"dataset": {"resolution_px": 512, "min_bucket_px": 640}}, "dataset.resolution_px", "min_bucket_px"),
    ({"dataset": {"use_reg": True}}, "dataset.reg_path", "no regularization folder"),
    ({"version": 99}, "version", "update Easel"),
])
def test_each_kind_of_error_names_its_key(data, key, words):
    problems = problems_of(data)
    assert key in problems, problems
    assert words in problems[key]


def test_lenient_spellings_people_write_are_accepted():
    p = preset_from_dict({"optimizers": {"unet": {"type": "AdamW", "lr": "1e-4"}},      # PyYAML reads 1e-4 as text
                          "schedules": {"unet": {"type": "cosineannealinglr", "eta_min_factor": 0.01}},
                          "sampling": {"strengths": 0.8, "prompts": "one prompt"}})
    assert p.optimizers["unet"].type == "adamw" and p.optimizers["unet"].lr == 1e-4
    assert p.schedules["unet"].type == "CosineAnnealingLR" and p.schedules["unet"].params["eta_min_factor"] == 0.01
    assert p.sampling.strengths == [0.8] and p.sampling.prompts == ["one prompt"]


def test_flat_optimizer_parameters_as_in_the_fluxflow_guide():
    p = preset_from_dict({"optimizers": {"unet": {"type": "lion", "lr": 5e-7, "betas": [0.9, 0.95],
                                                  "weight_decay": 0.01, "decoupled_weight_decay": True}}})
    assert p.optimizers["unet"].params == {"betas": [0.9, 0.95], "weight_decay": 0.01, "decoupled_weight_decay": True}
    flat = preset_to_dict(p)["optimizers"]["unet"]
    assert flat["betas"] == [0.9, 0.95] and "params" not in flat


def test_overrides_and_their_errors():
    p = preset_from_dict({}, ["training.max_steps=250", "dataset.trigger=ohwx", "optimizers.unet.lr=5e-5",
                              "sampling.strengths=[0.5, 1.0]", "network.train_text_encoder=true"])
    assert (p.training.max_steps, p.dataset.trigger, p.optimizers["unet"].lr) == (250, "ohwx", 5e-5)
    assert p.sampling.strengths == [0.5, 1.0] and p.network.train_text_encoder
    problems = problems_of({}, ["training.max_stepz=3", "nonsense"])
    assert "did you mean 'max_steps'" in problems["training.max_stepz"]
    assert "KEY=VALUE" in problems["--set"]


def test_environment_variables_of_the_flux_guide():
    env = {"MODEL_PATH": "/models/flux dev", "DATA_DIR": "/data/subject", "REG_DIR": "/data/reg", "OUT_DIR": "/out",
           "RUN_NAME": "john_doe", "SEED": "7", "MAX_STEPS": "2000", "BATCH_SIZE": "2", "GRAD_ACCUM": "4",
           "RANK": "48", "ALPHA": "24", "UNET_LR": "5e-5", "RESOLUTION": "768", "MIN_BUCKET_RESO": "384",
           "MAX_BUCKET_RESO": "1024", "ENABLE_TE": "1", "USE_REG": "1", "TWO_PHASE_TE": "1", "NOISE_OFFSET": "0.05",
           "UNRELATED": "x"}
    p = preset_from_dict({}, env=env)
    assert p.model.path == "/models/flux dev" and p.dataset.path == "/data/subject"
    assert p.dataset.reg_path == "/data/reg" and p.dataset.use_reg
    assert (p.output.dir, p.output.run_name, p.training.seed) == ("/out", "john_doe", 7)
    assert (p.training.max_steps, p.training.batch_size, p.training.grad_accum) == (2000, 2, 4)
    assert (p.network.rank, p.network.alpha, p.optimizers["unet"].lr) == (48, 24.0, 5e-5)
    assert (p.dataset.resolution_px, p.dataset.min_bucket_px, p.dataset.max_bucket_px) == (768, 384, 1024)
    assert p.network.train_text_encoder and p.network.te_two_phase and p.training.noise_offset == 0.05
    # --set wins over the environment
    assert preset_from_dict({}, ["network.rank=8"], env={"RANK": "48"}).network.rank == 8
    assert env_overrides({"RANK": ""}) == []


def test_an_environment_value_of_the_wrong_type_is_reported_by_its_key():
    assert "training.seed" in problems_of({}, env={"SEED": "forty"})


def test_json_preset_in_the_same_schema(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"model": {"family": "sd2"}, "training": {"max_steps": 0, "max_epochs": 25},
                                "schedules": {"unet": {"type": "cosine", "lr_decay_steps": 1500}}}), "utf-8")
    p = load_preset(path)
    assert p.model.family == "sd2" and p.training.max_epochs == 25 and p.schedules["unet"].lr_decay_steps == 1500
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"family": "sd15",}}', "utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_preset(bad)


def test_save_load_round_trip_yaml_and_json_with_unicode_path(tmp_path):
    p = preset_from_dict({"dataset": {"path": "C:\\Users\\Zoë\\My Pictures\\set 1", "trigger": "ohwx"},
                          "sampling": {"prompts": ["ohwx, café", "ohwx: a «quote»"]}})
    for name in ("p.yaml", "p.json"):
        path = save_preset(p, tmp_path / "dossier é" / name)
        assert load_preset(path) == p
        assert not path.with_name(name + ".tmp").exists()


def test_saved_yaml_has_stable_key_order_and_version():
    text = dump_preset(Preset())
    assert text.startswith(f"version: {CURRENT_VERSION}\nmodel:\n")
    sections = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert sections == ["model", "dataset", "network", "training", "optimizers", "schedules", "vae", "rl", "sampling", "validation",
                        "output"]
    assert "&id" not in text  # no YAML anchors in a file people read


def test_version_0_presets_are_migrated():
    p = preset_from_dict({"version": 0, "train": {"max_steps": 5}})
    assert p.training.max_steps == 5 and p.version == CURRENT_VERSION


def test_every_field_has_help_and_numeric_fields_have_ranges():
    for key, f in iter_fields():
        assert f.metadata.get("help"), key
        if f.type in ("int", "float", int, float):
            assert f.metadata.get("min") is not None and f.metadata.get("max") is not None, key
