"""More than one GPU: one engine process per GPU, started by `accelerate launch`, with DDP over the trained modules.

    python -m engine train RUN_DIR            with training.num_gpus: 2 -> relaunch() runs accelerate launch
    accelerate launch --multi_gpu --num_processes 2 -m engine train RUN_DIR     the same, typed by hand

The main process (rank 0) owns the run folder: the lock, events.jsonl, TensorBoard, checkpoints, samples and
validation. The others only train: each takes its share of every step's batches (share()), DDP averages the
gradients, so every process holds the same weights after each step. The step's decisions (stop, the loss values
for the NaN check) are the main process's, sent to all (same_everywhere, all_losses), so no process waits forever
in a collective that another one skipped.

DDP is built here from torch's class rather than through accelerator.prepare_model: the denoiser and a trained text
encoder need different settings (a text encoder's last layer is unused when its penultimate layer feeds the
denoiser), prepare_model would move block-swapped weights onto the GPU, and it rewrites the module's forward. The
frozen base weights are left out of DDP: they are identical everywhere (the same files), and a 12B FLUX would
otherwise be broadcast at start and be refused when block swap keeps part of it in CPU RAM.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

# accelerate launch (torchrun) sets RANK, LOCAL_RANK and WORLD_SIZE in every process it starts. RANK alone means
# nothing: the FLUX guide's RANK is the LoRA rank.
WORLD_VAR = "WORLD_SIZE"
# Lets the tests run the multi-process path on a machine without a GPU (gloo on CPU cores); never needed by a user.
CPU_PROCESSES_VAR = "EASEL_ALLOW_CPU_PROCESSES"
# A process may wait this long for the main one (caching a dataset, sampling, saving a FLUX LoRA) before giving up.
WAIT_FOR_MAIN = timedelta(hours=3)


def under_launcher() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get(WORLD_VAR, "1") or 1) > 1


def world_size() -> int:
    return int(os.environ[WORLD_VAR]) if under_launcher() else 1


def rank() -> int:
    return int(os.environ["RANK"]) if under_launcher() else 0


def is_main_process() -> bool:
    return rank() == 0


# --------------------------------------------------------------------------------------------------- launching

def launch_command(run_dir: Path, resume, num_gpus: int, port: int) -> list[str]:
    """accelerate launch with one process per GPU, each running `python -m engine train` on the same run folder.
    Precision and the rest come from the preset (the engine's Accelerator is told), so the launcher gets plain
    values instead of warning about a missing `accelerate config`. resume: False, True (the latest state) or a
    checkpoint's state file."""
    if resume is True:
        target = ["--resume", str(run_dir)]
    else:
        target = ["--resume", str(resume)] if resume else [str(run_dir)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_gpus),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "engine", "train", *target]


def free_port() -> int:
    """A free local port for the processes to meet on (the default 29500 may be taken by another program)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_gpus(num_gpus: int) -> str | None:
    """Why training.num_gpus cannot be honoured on this PC, or None."""
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if num_gpus <= 1 or found >= num_gpus or (found == 0 and os.environ.get(CPU_PROCESSES_VAR) == "1"):
        return None
    return (f"training.num_gpus is {num_gpus}, but this PC has {found} CUDA GPU(s). Set training.num_gpus: "
            f"{max(found, 1)} (or make the GPUs visible: CUDA_VISIBLE_DEVICES).")


def relaunch(run_dir: Path, resume, num_gpus: int) -> int:
    """Run the engine once per GPU through accelerate launch and wait; its exit code is the run's. The GUI stops it
    through control/stop as always (the main process passes the stop on), or kills the whole process tree."""
    problem = check_gpus(num_gpus)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return 2
    env = dict(os.environ)
    for name in ("RESUME_FROM", "DRY_RUN"):  # acted on already, by this process: the run folder has the result
        env.pop(name, None)
    if os.name == "nt":
        env.setdefault("USE_LIBUV", "0")  # torchrun's rendezvous store on Windows builds without libuv
    print(f"Starting {num_gpus} engine processes through accelerate launch (one per GPU)", flush=True)
    command = launch_command(Path(run_dir), resume, num_gpus, free_port())
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:  # Ctrl+C reaches the workers too; they save nothing half-way and stop
        return 0


# --------------------------------------------------------------------------------------------------- the processes

class Processes:
    """This process's place among the run's processes (one process: rank 0 of 1, and every method is a no-op)."""

    def __init__(self, rank_: int = 0, world: int = 1):
        self.rank, self.world = rank_, world
        self.is_main = rank_ == 0
        self.wrapped: dict[int, object] = {}   # id(trained module) -> its DDP wrapper
        self.sync_every_micro_batch = True     # DDP's static graph: gradients are reduced at every backward

    # ---- data
    def share(self, group: list[list[int]]) -> list[tuple[int, list[int]]]:
        """This process's (batch number in the epoch, sample indices) of one step's batches. Every process must do
        the same number of backward passes, so a short group at an epoch's end is topped up from its start."""
        numbered = list(enumerate(group))
        while len(numbered) % self.world:
            numbered.append(numbered[len(numbered) % len(group)])
        return numbered[self.rank::self.world]

    # ---- agreement
    def same_everywhere(self, value):
        """The main process's value, in every process."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def all_losses(self, losses, accelerator):
        """Every process's micro-batch losses (a 1-d tensor each) side by side: [world * n]."""
        return losses if self.world == 1 else accelerator.gather(losses)

    def gather(self, value) -> list:
        if self.world == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    @contextlib.contextmanager
    def main_first(self):
        """The main process first (it builds the caches); the others then read what it wrote."""
        if self.world == 1:
            yield
            return
        from accelerate import PartialState

        with PartialState().main_process_first():
            yield

    # ---- DDP
    def wrap(self, trainables: dict, device: str, grad_accum: int) -> None:
        """DDP over each trained module; the frozen base weights stay out of it (see the module docstring)."""
        if self.world == 1:
            return
        import torch
        from torch.nn.parallel import DistributedDataParallel

        # The guide's settings: a static graph and no search for unused parameters. A static graph cannot skip the
        # reduction of accumulating micro-batches (no_sync), so with grad_accum > 1 the graph is not static.
        static = grad_accum == 1
        self.sync_every_micro_batch = static
        for component, modules in trainables.items():
            for module in modules:
                if not any(p.requires_grad for p in module.parameters()):
                    continue
                if device == "cuda":  # torch's SyncBatchNorm runs on GPUs only (CPU processes: the tests)
                    use_sync_batchnorm(module)
                frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    module, frozen + [name for name, _ in module.named_buffers()])
                self.wrapped[id(module)] = DistributedDataParallel(
                    module, device_ids=[torch.cuda.current_device()] if device == "cuda" else None,
                    static_graph=static,
                    # a text encoder whose last layer does not feed the denoiser (SDXL, SD2 use the penultimate)
                    find_unused_parameters=not static and component == "text_encoder")

    def module(self, module):
        """What to call for a trained module's training forward: its DDP wrapper when it has one."""
        return self.wrapped.get(id(module), module)

    @contextlib.contextmanager
    def training_forward(self, comps, trained: list, last_micro_batch: bool):
        """The trained modules stand in as their DDP wrappers while the step's forward runs (the families call
        comps.denoiser(...) and the text encoders); between micro-batches the gradients are not reduced yet."""
        if not self.wrapped:
            yield
            return
        ddps = [self.wrapped[id(m)] for m in trained if id(m) in self.wrapped]
        saved = (comps.denoiser, list(comps.text_encoders))
        comps.denoiser = ThroughDdp.of(comps.denoiser, self.wrapped)
        comps.text_encoders = [ThroughDdp.of(te, self.wrapped) for te in comps.text_encoders]
        try:
            with contextlib.ExitStack() as stack:
                if not (self.sync_every_micro_batch or last_micro_batch):
                    for ddp in ddps:
                        stack.enter_context(ddp.no_sync())
                yield
        finally:
            comps.denoiser, comps.text_encoders = saved[0], saved[1]


class ThroughDdp:
    """A trained module during the training forward: calls go through its DDP wrapper, which reduces the gradients
    in the backward; attribute reads (.config, .dtype, ...) go to the module itself."""

    def __init__(self, ddp):
        object.__setattr__(self, "_ddp", ddp)

    @staticmethod
    def of(module, wrapped: dict):
        return ThroughDdp(wrapped[id(module)]) if id(module) in wrapped else module

    def __call__(self, *args, **kwargs):
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._ddp.module, name)


def use_sync_batchnorm(module) -> None:
    """BatchNorm layers in a trained module normalise over all processes' batches (none of the shipped families
    has one; a custom model may)."""
    import torch

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            use_sync_batchnorm(child)


def start() -> Processes:
    """Join the other processes (the process group through accelerate's PartialState, which also picks this
    process's GPU) when started by a launcher; one process otherwise."""
    if not under_launcher():
        return Processes()
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available(), timeout=WAIT_FOR_MAIN)
    return Processes(rank(), world_size())


class WorkerEvents:
    """The events of a process that is not the main one: nothing goes to events.jsonl (the main process writes the
    run's), but its warnings and errors reach engine.log, marked with the process number."""

    def __init__(self, rank_: int):
        self.rank = rank_

    def emit(self, kind: str, **fields) -> dict:
        if kind in ("warning", "error"):
            hint = f"\n  hint: {fields['hint']}" if fields.get("hint") else ""
            print(f"[process {self.rank}] {kind.upper()}: {fields.get('message', '')}{hint}", file=sys.stderr,
                  flush=True)
        return {"kind": kind, **fields}

    def close(self) -> None:
        pass
