"""More than one GPU (engine/training/distributed.py), tried with 2 CPU processes over gloo: accelerate launch starts
them, DDP averages their gradients, only the main process writes the run folder, and a resume is exact.

No GPU here: EASEL_ALLOW_CPU_PROCESSES=1 lets training.num_gpus: 2 start two CPU processes, the path a user's two
GPUs take with NCCL instead of gloo."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine.config.load import load_preset
from engine.events import read_all
from engine.runs import PROJECT_ROOT, create_run_dir
from engine.training.distributed import CPU_PROCESSES_VAR, Processes, check_gpus, launch_command
from support.dit import DIT_PRESET, TINY_DIT

DIT = [*TINY_DIT, "training.batch_size=4", "optimizers.unet.lr=1e-3", "sampling.prompts=[a]", "sampling.steps=2",
       "sampling.every_n_steps=0", "output.save_every_n_steps=0", "training.num_gpus=2"]


def engine_train(*args, cpu_processes: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    if cpu_processes:
        env[CPU_PROCESSES_VAR] = "1"
    else:
        env.pop(CPU_PROCESSES_VAR, None)
    return subprocess.run([sys.executable, "-m", "engine", "train", *map(str, args)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=600)


def dit_run(shapes, tmp_path, name, *overrides) -> Path:
    return create_run_dir(load_preset(DIT_PRESET, [f"dataset.path={shapes}", *DIT, *overrides]), root=tmp_path / name)


def trained_weights(run_dir: Path) -> dict:
    return load_file(str(next(run_dir.glob("*-diffusers")) / "transformer" / "diffusion_pytorch_model.safetensors"))


# --------------------------------------------------------------------------------------------------- unit

def test_each_process_takes_its_share_and_a_short_group_is_topped_up():
    group = [[0, 1], [2, 3], [4, 5]]  # an epoch's last step: three batches for two GPUs
    first, second = Processes(0, 2).share(group), Processes(1, 2).share(group)
    assert first == [(0, [0, 1]), (2, [4, 5])] and second == [(1, [2, 3]), (0, [0, 1])]
    assert Processes().share(group) == list(enumerate(group))  # one GPU: the whole group, as always


def test_the_launch_goes_through_accelerate_with_one_process_per_gpu(tmp_path):
    command = launch_command(tmp_path / "run ü", resume=True, num_gpus=2, port=29501)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    assert command[-5:] == ["-m", "engine", "train", "--resume", str(tmp_path / "run ü")]


def test_the_guides_rank_variable_is_the_lora_rank_not_a_process_number(monkeypatch):
    from engine.training.distributed import is_main_process, under_launcher

    monkeypatch.setenv("RANK", "48")  # RANK=48 python -m engine train ... (the FLUX guide)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not under_launcher() and is_main_process()


def test_a_preset_file_under_accelerate_launch_is_refused(tmp_path, monkeypatch, capsys):
    """Every process would create its own run folder: a run folder (or training.num_gpus) is the way."""
    from engine.cli import train

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert train([str(PROJECT_ROOT / "presets" / "dit-flow-matching.yaml")]) == 2
    assert "name a run folder, not a preset: set training.num_gpus" in capsys.readouterr().err
    assert not (PROJECT_ROOT / "runs").exists() or not list((PROJECT_ROOT / "runs").glob("dit-flow-*"))


def test_more_gpus_than_the_pc_has_is_refused_naming_the_key(shapes, tmp_path, monkeypatch):
    monkeypatch.delenv(CPU_PROCESSES_VAR, raising=False)
    assert "training.num_gpus is 2" in check_gpus(2) and check_gpus(1) is None
    run_dir = dit_run(shapes, tmp_path, "runs")
    result = engine_train(run_dir, cpu_processes=False)
    assert result.returncode == 2 and "training.num_gpus is 2, but this PC has 0 CUDA GPU(s)" in result.stderr
    assert not (run_dir / "events.jsonl").exists()  # nothing started


class TextEncoder(torch.nn.Module):
    """Two layers whose caller reads the first one's output (SDXL's penultimate hidden state): the last layer is
    unused, which DDP must be told about."""

    def __init__(self):
        super().__init__()
        self.first, self.last = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        penultimate = self.first(x)
        return {"penultimate": penultimate, "last": self.last(penultimate)}


def models():
    torch.manual_seed(0)  # the same initial weights in every process, as the same base files and seed give
    return torch.nn.Linear(4, 4), TextEncoder()


def _gradients_in_two_processes(rank: int, port: int, grad_accum: int, out: str) -> None:
    """One of two gloo processes: a denoiser and a text encoder (its last layer unused, as SDXL's penultimate
    layer), trained through Processes on this process's own data; writes the gradients it ends with."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    denoiser, te = models()
    comps = SimpleNamespace(denoiser=denoiser, text_encoders=[te])
    processes = Processes(rank, 2)
    processes.wrap({"unet": [denoiser], "text_encoder": [te]}, "cpu", grad_accum)
    for k in range(grad_accum):
        x = torch.full((2, 4), float(rank * 10 + k + 1))
        with processes.training_forward(comps, [denoiser, te], last_micro_batch=k == grad_accum - 1):
            cond = comps.text_encoders[0](x)["penultimate"]
            loss = comps.denoiser(cond).square().mean() / grad_accum
            loss.backward()
    assert comps.denoiser is denoiser  # put back after the forward
    torch.save({"denoiser": denoiser.weight.grad, "te": te.first.weight.grad}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_ddp_averages_the_gradients_of_both_processes(tmp_path, grad_accum):
    import torch.multiprocessing as mp

    from engine.training.distributed import free_port

    port = free_port()
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    context = mp.get_context("spawn")
    workers = [context.Process(target=_gradients_in_two_processes, args=(r, port, grad_accum, outs[r]))
               for r in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    got = [torch.load(o) for o in outs]
    # the same step in one process, each rank's data in turn: the mean of the two is what DDP must give
    expected = {"denoiser": 0, "te": 0}
    for rank in range(2):
        denoiser, te = models()
        for k in range(grad_accum):
            x = torch.full((2, 4), float(rank * 10 + k + 1))
            (denoiser(te(x)["penultimate"]).square().mean() / grad_accum).backward()
        expected = {"denoiser": expected["denoiser"] + denoiser.weight.grad / 2,
                    "te": expected["te"] + te.first.weight.grad / 2}
    for g in got:
        torch.testing.assert_close(g["denoiser"], expected["denoiser"])
        torch.testing.assert_close(g["te"], expected["te"])


# --------------------------------------------------------------------------------------------------- end to end

def test_two_processes_train_one_run_folder_and_resume_exactly(shapes, tmp_path):
    """The DiT on 2 processes: one events stream (the main process's), the effective batch, the plan's steps, best
    files; then a run trained 2 steps and extended to 4 by --resume ends with the weights of a 4-step run."""
    whole = dit_run(shapes, tmp_path, "whole", "training.max_steps=4", "validation.fraction=0.25")
    result = engine_train(whole)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = read_all(whole / "events.jsonl")
    started = next(e for e in events if e["kind"] == "started")
    assert started["processes"] == 2 and started["effective_batch"] == 8
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3, 4]  # each step once, not once per GPU
    assert [e["kind"] for e in events].count("done") == 1 and [e["kind"] for e in events].count("sample") == 1
    assert [e["step"] for e in events if e["kind"] == "val"] == [4]
    assert list((whole / "checkpoints" / "best").iterdir())

    part = dit_run(shapes, tmp_path, "part", "training.max_steps=2", "validation.fraction=0.25")
    assert engine_train(part).returncode == 0
    preset = yaml.safe_load((part / "preset.yaml").read_text(encoding="utf-8"))
    preset["training"]["max_steps"] = 4  # a finished run extended: the resume state carries both processes' noise
    (part / "preset.yaml").write_text(yaml.safe_dump(preset), encoding="utf-8")
    result = engine_train("--resume", part)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not [e for e in read_all(part / "events.jsonl") if e["kind"] == "warning" and "GPU(s)" in e["message"]]
    a, b = trained_weights(whole), trained_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_two_process_epoch_has_half_the_steps(shapes, tmp_path):
    """12 training images, batch 4: 3 batches an epoch, 2 steps on two GPUs (the second topped up)."""
    run_dir = dit_run(shapes, tmp_path, "runs", "training.max_steps=0", "training.max_epochs=1",
                      "validation.fraction=0.25")
    assert engine_train(run_dir).returncode == 0
    steps = [e for e in read_all(run_dir / "events.jsonl") if e["kind"] == "step"]
    assert [e["total_steps"] for e in steps] == [2, 2] and steps[-1]["epoch"] == 1


def test_a_lora_with_its_text_encoder_trains_on_two_processes(demo_preset, tmp_path):
    """The SD1.5 demo LoRA, text encoder trained too, with gradient accumulation: the DDP of two modules, without
    a static graph, through the families' own forward code; its file loads in the self-check."""
    run_dir = create_run_dir(load_preset(demo_preset, ["training.max_steps=2", "training.num_gpus=2",
                                                       "training.grad_accum=2", "network.train_text_encoder=true",
                                                       "sampling.prompts=[]", "output.save_every_n_steps=0"]),
                             root=tmp_path / "runs")
    result = engine_train(run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = read_all(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2]
    steps = [e for e in events if e["kind"] == "step"]
    assert set(steps[-1]["lr"]) == {"unet", "text_encoder"}
    saved = [e["path"] for e in events if e["kind"] == "saved"]
    assert saved and all(Path(p).is_file() for p in saved)
    assert (run_dir / "state" / "state.pt").is_file() and events[-1]["kind"] == "done"


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_vae_with_its_discriminator_trains_on_two_processes(demo_preset, tmp_path, grad_accum):
    """training.mode vae under DDP: the VAE's step module and the critic, each once forward per micro-batch."""
    run_dir = create_run_dir(load_preset(demo_preset, ["training.mode=vae", "vae.gan=true", "training.max_steps=2",
                                                       "training.num_gpus=2", f"training.grad_accum={grad_accum}",
                                                       "sampling.every_n_steps=0", "output.save_every_n_steps=0"]),
                             root=tmp_path / "runs")
    result = engine_train(run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = read_all(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2]
    assert (run_dir / "demo.safetensors").is_file() and (run_dir / "demo-vae").is_dir()
