"""Reflow (EveryDream2's --reflow_steps, after Liu et al. 2022, "Flow Straight and Fast"): after the rectified-flow
training, each iteration couples noise with the model's own answer and trains on those pairs, which straightens
the flow (fewer sampling steps give the same image).

    iteration k of training.reflow_steps:
      generate: for reflow_gen_batches batches of the dataset (their captions / classes), fresh noise z is carried
                by the current model's ODE (Euler, reflow_sample_steps: 0 -> sampling.steps -> 50) to x0; each pair
                (z, x0, its conditioning) is one file in RUN_DIR/reflow/iter<k>/, written atomically, so a stopped
                run generates only what is missing;
      train:    reflow_train_epochs epochs on the pairs with the same flow objective, the noise being the pair's z
                instead of a fresh draw (x_t = (1 - t) x0 + t z, target z - x0).
    straightness (Liu et al.): the mean squared gap between the 1-step and the reflow_sample_steps-step sample from
    the same noise, measured on the first generated batch before each iteration and at the end (`reflow` events).

The pairs come from the model's conditional ODE without classifier-free guidance (as Liu et al. generate them).
Every family whose objective is flow can reflow: the generation calls the family's predict, as training does.

REFLOW is the phase after the denoiser's (modes/registry.py chooses it when training.reflow_steps > 0): its steps
are the loop's, on the pairs (whose batches bring their noise: modes/denoiser.py's batch_loss takes it), and it
saves, validates and samples as the denoiser's phase does. setup_reflow sets the run up with the reflow steps in its
LR schedule.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from engine.atomic import atomic_write
from engine.data.plan import reflow_steps_per_iteration as steps_per_iteration
from engine.data.plan import total_reflow_steps
from engine.data.samples import Sample
from engine.failures import UserError
from engine.training.modes import denoiser
from engine.training.modes.phase import Loop, Phase
from engine.training.setup import setup

REFLOW_DIR = "reflow"
DEFAULT_SAMPLE_STEPS = 50  # EveryDream2: reflow_sample_steps 0 -> sample_steps, and 0 there too -> 50


def sample_steps(training, sampling) -> int:
    return training.reflow_sample_steps or sampling.steps or DEFAULT_SAMPLE_STEPS


class PairSource:
    """The BatchSource of one iteration's pairs: batches as the dataset's (latents = the generated x0, cond,
    size_cond, loss_weight) plus `noise`, the z each x0 came from."""

    val_indices: list = []
    latents = None
    text_cache = None

    def __init__(self, samples: list[Sample], device: str):
        self.samples, self.device = samples, device

    def __call__(self, indices: list[int], epoch: int, batch_index: int, fixed: bool = False) -> dict:
        pairs = [torch.load(self.samples[i].image, map_location="cpu", weights_only=True) for i in indices]
        stack = lambda key: torch.stack([p[key] for p in pairs]).to(self.device)  # noqa: E731
        cond = {k: torch.stack([p["cond"][k] for p in pairs]).to(self.device) for k in pairs[0]["cond"]}
        return {"latents": stack("x0"), "noise": stack("noise"), "cond": cond, "size_cond": stack("size_cond"),
                "loss_weight": stack("loss_weight"), "files": [str(self.samples[i].image) for i in indices],
                "captions": [self.samples[i].caption for i in indices]}


def pair_files(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / REFLOW_DIR / f"iter{iteration:02d}"


def fixed_batches(r) -> list[list[int]]:
    """The dataset batches whose conditioning the pairs take: the first reflow_gen_batches of a fixed epoch order
    (cycled when the dataset has fewer)."""
    from engine.data.samples import epoch_batches

    batches = epoch_batches(r.dataset_samples, r.preset.training.batch_size, r.preset.training.seed, 0)
    return [batches[b % len(batches)] for b in range(r.preset.training.reflow_gen_batches)]


@contextlib.contextmanager
def sampling_weights(r):
    """The weights the samples show: eval mode (dropout off), the EMA's when it is on."""
    from engine.sampling.render import eval_mode

    modules = [m for modules in r.trainables.values() for m in modules]
    with torch.no_grad(), eval_mode(modules), (r.ema.applied() if r.ema else contextlib.nullcontext()):
        yield


def integrate(r, noise: torch.Tensor, cond: dict, size_cond, steps: int) -> torch.Tensor:
    """x0 from noise through the model's ODE in `steps` Euler steps (Easel's convention: t = 1 at noise)."""
    from engine.sampling.ode import sample_flow

    def velocity(x, t):
        with r.accelerator.autocast():
            return r.family.predict(r.comps, x.to(r.weight_dtype), t, cond, size_cond).float()

    return sample_flow(velocity, noise, "euler", steps)


def pair_noise(r, iteration: int, batch_number: int, shape) -> torch.Tensor:
    """The z of a batch of pairs: its own generator, so a resumed generation draws the same."""
    g = torch.Generator().manual_seed(r.preset.training.seed * 1_000_003 + iteration * 10_007 + batch_number)
    return torch.randn(shape, generator=g).to(r.device)


def generate(r, iteration: int) -> list[Sample]:
    """This iteration's pairs (those already on disk are kept); one Sample per pair file."""
    folder = pair_files(r.run_dir, iteration)
    folder.mkdir(parents=True, exist_ok=True)
    steps = sample_steps(r.preset.training, r.preset.sampling)
    batches = fixed_batches(r)
    total = sum(len(b) for b in batches)
    samples, done = [], 0
    text = f"reflow {iteration + 1}/{r.preset.training.reflow_steps}: generating"
    with sampling_weights(r):
        for b, indices in enumerate(batches):
            paths = [folder / f"pair{b:04d}_{j:02d}.pt" for j in range(len(indices))]
            if not all(p.is_file() for p in paths):
                batch = r.dataset_batches(indices, 0, b, fixed=True)
                x0_shape = batch["latents"].shape
                noise = pair_noise(r, iteration, b, x0_shape)
                x0 = integrate(r, noise, batch["cond"], batch["size_cond"], steps) if r.processes.is_main else None
                if r.processes.is_main:
                    for j, path in enumerate(paths):
                        pair = {"noise": noise[j].cpu(), "x0": x0[j].cpu(),
                                "cond": {k: v[j].cpu() for k, v in batch["cond"].items()},
                                "size_cond": batch["size_cond"][j].cpu(), "loss_weight": batch["loss_weight"][j].cpu()}
                        atomic_write(path, lambda tmp, pair=pair: torch.save(pair, tmp))
            for j, i in enumerate(indices):
                s = r.dataset_samples[i]
                samples.append(Sample(paths[j], s.caption, s.size, s.bucket, 1, s.loss_weight))
            done += len(indices)
            r.status("reflow", text, n=done, total=total)
    r.processes.same_everywhere(None)  # the other GPUs read the pairs once the main process has written them
    return samples


def straightness(r, iteration: int) -> float:
    """Mean squared gap between the 1-step and the many-step sample from the first pair batch's noise."""
    batches = fixed_batches(r)
    batch = r.dataset_batches(batches[0], 0, 0, fixed=True)
    noise = pair_noise(r, 10_000, 0, batch["latents"].shape)  # its own noise, the same at every measurement
    with sampling_weights(r):
        one = integrate(r, noise, batch["cond"], batch["size_cond"], 1)
        many = integrate(r, noise, batch["cond"], batch["size_cond"], sample_steps(r.preset.training,
                                                                                   r.preset.sampling))
    return (one - many).square().mean().item()


def train_reflow(r, loop: Loop) -> str:
    """Every reflow iteration from r.reflow_iteration (a resumed run continues inside its iteration); returns
    'done' or 'stopped'. loop.train(r, end) trains r.batches (the iteration's pairs) until the iteration's end."""
    training = r.preset.training
    per_iteration = steps_per_iteration(training, r.processes.world)
    first = r.reflow_iteration or 0
    for k in range(first, training.reflow_steps):
        resumed_inside = r.reflow_iteration == k and r.step > r.main_steps + k * per_iteration
        if not resumed_inside:
            r.emit("reflow", iteration=k, straightness=straightness(r, k), before=True)
        r.reflow_iteration = k
        pairs = generate(r, k)
        r.samples, r.batches = pairs, PairSource(pairs, r.device)
        if not resumed_inside:
            r.epoch, r.cursor = 0, 0
        r._epoch_cache = {}
        r.status("reflow", f"reflow {k + 1}/{training.reflow_steps}: training {per_iteration} steps on "
                           f"{len(pairs)} pairs")
        if loop.train(r, r.main_steps + (k + 1) * per_iteration) == "stopped":
            return "stopped"
    r.samples, r.batches = r.dataset_samples, r.dataset_batches
    r.emit("reflow", iteration=training.reflow_steps, straightness=straightness(r, training.reflow_steps),
           before=False)
    return "done"


def reflow_begun(r) -> bool:
    """A run resumed inside a reflow iteration goes on there (its batches are that iteration's pairs)."""
    return r.reflow_iteration is not None


def reflow_run_steps(preset, objective_name: str, dataset_steps: int, processes: int) -> tuple[int, int]:
    """(the denoiser phase's steps, the run's): the LR schedule spans the reflow iterations too. Reflow straightens
    a flow: another objective (training.objective auto on an epsilon model) is refused before training."""
    if objective_name != "flow":
        raise UserError(f"training.reflow_steps: reflow straightens a flow, and this run trains {objective_name}.",
                        "Set training.objective: flow (on a v-prediction base), or training.reflow_steps: 0.")
    return dataset_steps, dataset_steps + total_reflow_steps(preset.training, processes)


def setup_reflow(run_dir: Path, preset, events, resume):
    """The denoiser's run set up for its reflow iterations after the dataset's steps."""
    return setup(run_dir, preset, events, resume, phase_steps=reflow_run_steps)


REFLOW = Phase(name="reflow", begun=reflow_begun, train=train_reflow, backward=denoiser.backward,
               save=denoiser.save_network, validation_loss=denoiser.validation_loss,
               render_samples=denoiser.render_samples)
