"""training.mode rl end to end on tiny models, in-process: the mean reward rises under GRPO and under DiffusionNFT;
an SD 1.5 LoRA trains after a supervised warmup with guidance, KL and EMA and its samples carry their rewards; a
stopped RL run resumes with its statistics; a reward server that goes away pauses the run, which goes on when the
server is back or stops on request; the checks that refuse a preset before loading."""
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from engine.config.load import ConfigError, load_preset
from engine.events import read_all
from engine.rl.mode import RL_MODE
from engine.runs import PROJECT_ROOT, create_run_dir
from engine.training import loop as train
from support.dit import DIT_PRESET as DIT
from support.dit import TINY_DIT
from support.runs import train_run

# the tiny DiT on 32 px pixels: its images are its own output, so brightness is a reward it can learn in seconds
RL_DIT = [*TINY_DIT, "training.precision=fp32", "training.max_epochs=0", "sampling.prompts=[]",
          "output.save_every_n_steps=0", "training.mode=rl", "rl.warmup_steps=0", "rl.rewards={brightness: 1.0}",
          "rl.num_images_per_prompt=4", "rl.num_inference_steps=8", "rl.guidance_scale=1.0",
          "training.batch_size=2", "rl.kl_beta=0.0"]


def phases_run(run_dir, resume=False):
    return train.run(run_dir, resume=resume, modes={"rl": RL_MODE})


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rl prompts ü") / "prompts.txt"
    path.write_text("# two prompts\na picture\nanother picture\n", encoding="utf-8")
    return path


def dit_run(tmp_path, prompts_file, *overrides):
    return train_run(DIT, tmp_path / "runs", *RL_DIT, f"rl.prompts_file={prompts_file}", *overrides, run=phases_run)


def reward_curve(events):
    return [e["reward_mean"] for e in events if e["kind"] == "rl"]


def rises(curve, epochs=3):
    start, end = sum(curve[:epochs]) / epochs, sum(curve[-epochs:]) / epochs
    return end - start


def test_grpo_raises_the_mean_reward(tmp_path, prompts_file):
    run_dir, code, events = dit_run(tmp_path, prompts_file, "rl.method=grpo", "training.max_steps=80",
                                    "optimizers.unet.lr=1e-3")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    curve = reward_curve(events)
    assert len(curve) == 20  # an epoch: 2 prompts x 4 images, trained 2 a step: 4 steps
    stds = [e["reward_std"] for e in events if e["kind"] == "rl"]
    assert rises(curve) > 3 * max(stds[:3]), curve  # well beyond the spread within an epoch
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 81))
    assert {"policy_loss", "clip_frac", "approx_kl", "reward_mean", "reward_std"} <= set(steps[-1])
    assert events[-1]["kind"] == "done" and (run_dir / "dit-flow-diffusers").is_dir()


def test_nft_raises_the_mean_reward(tmp_path, prompts_file):
    run_dir, code, events = dit_run(tmp_path, prompts_file, "rl.method=nft", "training.max_steps=120",
                                    "optimizers.unet.lr=1e-2", "rl.decay_type=1", "rl.adv_mode=normal")
    assert code == 0, [e for e in events if e["kind"] == "error"]
    curve = reward_curve(events)
    stds = [e["reward_std"] for e in events if e["kind"] == "rl"]
    assert rises(curve) > 3 * max(stds[:3]), curve
    assert {"positive_loss", "negative_loss"} <= set(next(e for e in events if e["kind"] == "step"))


SD_RL = ["training.mode=rl", "rl.warmup_steps=2", "rl.rewards={brightness: 1.0, jpeg_compressibility: 0.01}",
         "rl.num_images_per_prompt=2", "rl.num_inference_steps=4", "rl.guidance_scale=3.0", "training.batch_size=2",
         "sampling.steps=4", "sampling.strengths=[1.0]", "output.save_every_n_steps=0", "dataset.repeats=1",
         "training.ema.enabled=true", "training.ema.decay=0.9", "rl.per_prompt_stat_tracking=true",
         "rl.stat_min_count=2"]


def test_an_sd15_lora_warms_up_then_trains_with_guidance_kl_and_ema(demo_preset, tmp_path):
    """Through the engine's own entry (engine/cli.py gives the loop its RL phase), with a KL to the LoRA-off
    reference, guided rollouts, per-prompt statistics, EMA samples scored by the reward."""
    from engine.cli import _run
    from engine.models.lora import lora_file_components

    preset = load_preset(demo_preset, [*SD_RL, "rl.method=grpo", "training.max_steps=6", "rl.kl_beta=0.1",
                                       "sampling.every_n_steps=4"])
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert _run(run_dir, resume=False) == 0
    events = read_all(run_dir / "events.jsonl")
    assert not [e for e in events if e["kind"] == "error"]
    kinds = [(e["kind"], e.get("step")) for e in events if e["kind"] in ("step", "rl")]
    assert kinds[:3] == [("step", 1), ("step", 2), ("rl", 2)]  # the supervised warmup, then the first rollouts
    rl_steps = [e for e in events if e["kind"] == "step" and e["step"] > 2]
    assert len(rl_steps) == 4 and all("kl" in e and e["kl"] >= 0 for e in rl_steps)
    assert any(e["kl"] > 0 for e in rl_steps)  # the LoRA moved away from the base
    first = next(e for e in events if e["kind"] == "rl")
    assert set(first["rewards"]) == {"brightness", "jpeg_compressibility"} and first["images"] == 4
    assert all(v["n"] == 2 for v in first["per_prompt"].values())
    samples = [e for e in events if e["kind"] == "sample"]
    assert samples and all("reward" in e for e in samples)
    lora = run_dir / "demo.safetensors"
    assert lora.is_file() and lora_file_components(lora) == {"unet"}  # saved (and self-checked on save)
    assert (run_dir / "tensorboard").is_dir()


def test_a_stopped_rl_run_resumes_with_its_statistics_and_old_model(demo_preset, tmp_path, monkeypatch):
    import engine.rl.phase as phase
    from engine.training import checkpoints as ckpt

    preset = load_preset(demo_preset, [*SD_RL, "rl.method=nft", "training.max_steps=8", "rl.kl_beta=0.01",
                                       "rl.decay_type=2", "sampling.prompts=[]"])
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    real_report = train.report_step

    def press_stop(r, loss, seconds):
        real_report(r, loss, seconds)
        if r.step == 5:
            (r.run_dir / "control" / "stop").touch()

    monkeypatch.setattr(train, "report_step", press_stop)
    assert phases_run(run_dir) == 0
    state = ckpt.load_state(ckpt.state_file(run_dir, True))
    saved = state["phase_state"]["rl"]
    assert state["step"] == 5 and saved["epoch"] >= 1 and saved["tracker"]["history"] and saved["old"]
    loaded = {}
    real_init = phase.RlTrainer.__init__

    def spy(self, r, loop):
        real_init(self, r, loop)
        loaded.update(epoch=self.epoch, history=dict(self.tracker.history))

    monkeypatch.setattr(train, "report_step", real_report)
    monkeypatch.setattr(phase.RlTrainer, "__init__", spy)
    assert phases_run(run_dir, resume=True) == 0
    assert loaded["epoch"] == saved["epoch"] and set(loaded["history"]) == set(saved["tracker"]["history"])
    events = read_all(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["kind"] == "step"] == list(range(1, 9))
    assert events[-1]["kind"] == "done"


def server_run(tmp_path, prompts_file, server, *overrides):
    preset = load_preset(DIT, [*RL_DIT, f"rl.prompts_file={prompts_file}", "rl.rewards={server: 1.0}",
                               f"rl.reward_server_url={server.url}", "rl.reward_server_retries=1",
                               "rl.reward_server_timeout_s=1", *overrides])
    return create_run_dir(preset, root=tmp_path / "runs")


def when(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_reward_server_that_goes_away_pauses_the_run_until_it_is_back(tmp_path, prompts_file, reward_server):
    server = reward_server()
    run_dir = server_run(tmp_path, prompts_file, server, "training.max_steps=12")
    events_file = run_dir / "events.jsonl"

    def outage():  # after the second epoch's rewards: away until the run has said it is paused, then back
        when(lambda: server.requests >= 2)
        server.down()
        when(lambda: events_file.exists() and '"paused"' in events_file.read_text(encoding="utf-8"))
        server.up()

    helper = threading.Thread(target=outage, daemon=True)
    helper.start()
    assert phases_run(run_dir) == 0
    helper.join(5)
    events = read_all(events_file)
    warnings = [e for e in events if e["kind"] == "warning"]
    assert any(server.url in e["message"] and "paused" in e["message"] for e in warnings), warnings
    assert any(e["kind"] == "status" and "answers again" in e["text"] for e in events)
    assert [e["step"] for e in events if e["kind"] == "step"] == list(range(1, 13)) and events[-1]["kind"] == "done"
    server.down()


def test_a_run_paused_for_its_reward_server_stops_on_request_and_keeps_its_checkpoint(tmp_path, prompts_file,
                                                                                        reward_server):
    server = reward_server()
    run_dir = server_run(tmp_path, prompts_file, server, "training.max_steps=40")
    events_file = run_dir / "events.jsonl"

    def outage_then_stop():
        when(lambda: server.requests >= 2)
        server.down()
        when(lambda: events_file.exists() and '"paused"' in events_file.read_text(encoding="utf-8"))
        (run_dir / "control" / "stop").touch()

    helper = threading.Thread(target=outage_then_stop, daemon=True)
    helper.start()
    assert phases_run(run_dir) == 0
    helper.join(5)
    events = read_all(events_file)
    assert events[-1]["kind"] == "stopped" and events[-1]["step"] == 8  # two epochs of 4 steps were trained
    assert (run_dir / "state").is_dir() and list((run_dir / "checkpoints").iterdir())


@pytest.mark.parametrize("overrides, key", [
    (["training.max_steps=100", "rl.warmup_steps=100"], "rl.warmup_steps"),
    (["training.max_steps=0", "training.max_epochs=3"], "training.max_steps"),
    (["rl.rewards={}"], "rl.rewards"),
    (["training.num_gpus=2"], "training.num_gpus"),
    (["rl.method=grpo", "rl.num_images_per_prompt=1", "training.batch_size=1"], "rl.num_images_per_prompt"),
])
def test_presets_rl_cannot_train_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_preset(DIT, [*RL_DIT, *overrides])


def test_no_prompts_says_where_prompts_come_from(tmp_path):
    preset = load_preset(DIT, [*RL_DIT, "training.max_steps=4"])  # warmup 0, no prompts file: the dataset...
    run_dir = create_run_dir(preset, root=tmp_path / "runs")
    assert phases_run(run_dir) in (1, 2)
    error = next(e for e in read_all(run_dir / "events.jsonl") if e["kind"] == "error")
    assert "dataset.path" in error["message"] or "rl.prompts_file" in error["message"]


def test_the_guides_presets_load_with_its_values():
    grpo = load_preset(PROJECT_ROOT / "presets" / "rl-grpo.yaml")
    nft = load_preset(PROJECT_ROOT / "presets" / "rl-nft.yaml")
    assert (grpo.rl.method, grpo.rl.clip_range, grpo.rl.kl_beta, grpo.training.ema.decay) == ("grpo", 0.2, 0.1, 0.9999)
    assert (nft.rl.method, nft.rl.nft_beta, nft.rl.decay_type, nft.rl.kl_beta, nft.training.ema.decay) == \
        ("nft", 0.5, 1, 0.01, 0.999)
    assert grpo.rl.warmup_steps == 500 and nft.rl.warmup_steps == 1000 and grpo.rl.num_images_per_prompt == 4


def test_the_dry_run_says_what_an_rl_run_will_do(capsys):
    from engine.cli import train as cli_train

    code = cli_train([str(PROJECT_ROOT / "presets" / "rl-grpo.yaml"), "--dry-run", "--set", "rl.warmup_steps=0",
                      "--set", "training.max_steps=101"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "RL (GRPO): 0 supervised warmup step(s), then 101 RL steps in 101 epoch(s) of 1 step(s)" in out
    assert "4 rollout images" in out and "4 forward pass(es) per trained step (guidance on, KL on)" in out
