"""The resume state, both ways: what a save keeps of the Run (resume_state) and how a resumed run puts it back
(restore): the trained weights, optimizer and LR schedule, every process's random state, the data position, the
EMA, the best files, the phase being trained and a later phase's own state. A run resumed from it continues at the
exact step.
"""
from __future__ import annotations

from pathlib import Path

from engine.failures import UserError
from engine.training import checkpoints as ckpt
from engine.training.run_state import Run, freeze_finished_components, named_trainables


def save_resume_state(r: Run) -> None:
    """state/ (main process), with every process's random state: a resumed multi-GPU run draws the same noise."""
    rngs = r.processes.gather(ckpt.rng_state(r.noise_gen))
    if r.processes.is_main:
        ckpt.save_state(r.run_dir / "state", resume_state(r, rngs))


def resume_state(r: Run, rngs: list[dict]) -> dict:
    """`rngs`: every process's random state, the main process's first."""
    return {"step": r.step, "epoch": r.epoch, "cursor": r.cursor, "total_steps": r.total_steps,
            "started_at": r.started_at, "network": network_shape(r.preset.network),
            "samples": len(r.dataset_samples or r.samples),
            "weights": ckpt.trained_weights(named_trainables(r), r.trained_names),
            "reflow_iteration": r.reflow_iteration,
            "phase_state": {name: part.state_dict() if hasattr(part, "state_dict") else part
                            for name, part in r.phase_state.items()},
            "optim": r.optim.state_dict(), "rng": rngs[0], "rng_processes": rngs if len(rngs) > 1 else None,
            "ema": r.ema.state_dict() if r.ema else None, "best": r.best.state_dict() if r.best else None}


def restore(r: Run) -> None:
    """Continue at the saved step: weights, optimizer + schedule, RNG and data position."""
    state = ckpt.load_state(ckpt.state_file(r.run_dir, r.resume))
    check_same_network(state.get("network"), r.preset.network, r.run_dir)
    r.reflow_iteration = state.get("reflow_iteration")
    if state["samples"] != len(r.samples):
        r.emit("warning", message=f"The dataset changed since the run stopped ({state['samples']} -> "
                                  f"{len(r.samples)} images): the data order after resuming differs.")
    ckpt.restore_weights(named_trainables(r), state["weights"])
    r.optim.load_state_dict(state["optim"], preserve_lr=r.preset.training.preserve_lr)
    for message in r.optim.warnings:  # e.g. a new optimizer type in the edited preset starts with fresh state
        r.emit("warning", message=message)
    restore_random_state(r, state)
    if r.ema is not None and state.get("ema") is not None:
        r.ema.load_state_dict(state["ema"])
    if r.best is not None:
        r.best.load_state_dict(state.get("best"))
    r.step, r.epoch, r.cursor = state["step"], state["epoch"], state["cursor"]
    r.phase_state = dict(state.get("phase_state") or {})
    r.started_at = state.get("started_at", r.started_at)
    freeze_finished_components(r)
    r.status("resuming", f"Resuming at step {r.step} of {r.total_steps} (epoch {r.epoch + 1})")


def restore_random_state(r: Run, state: dict) -> None:
    """This process's saved random state; a multi-GPU run resumed on another number of GPUs keeps the data
    position, the others start new noise streams."""
    saved = state.get("rng_processes") or [state["rng"]]
    world = r.processes.world
    if len(saved) != world:
        r.emit("warning", message=f"The run was trained on {len(saved)} GPU(s) and resumes on {world}: it continues "
                                  f"at the same step and data position, with new random noise for each GPU.")
    if r.processes.rank < len(saved):
        ckpt.restore_rng(saved[r.processes.rank], r.noise_gen)


def network_shape(network) -> dict:
    """What the saved weights' shapes depend on (kept in the resume state): a resume with other values cannot
    load them."""
    return {"type": network.type, "rank": network.rank, "train_text_encoder": network.train_text_encoder,
            "targets": list(network.targets)}


def check_same_network(saved: dict | None, network, run_dir: Path) -> None:
    """A resume whose preset.yaml changed the network's shape: say which setting, and the two ways on."""
    if not saved:
        return  # a state from before Easel recorded it: restore_weights still refuses a mismatch
    now = network_shape(network)
    changed = [key for key in saved if saved[key] != now.get(key)]
    if not changed:
        return
    key = changed[0]
    files = sorted((run_dir / "checkpoints").glob("*.safetensors")) + sorted(run_dir.glob("*.safetensors"))
    example = f" (e.g. {files[-1]})" if files else " (a .safetensors file of its checkpoints/ folder)"
    raise UserError(f"network.{key}: the run was trained with {key} {saved[key]!r}, and its preset.yaml now says "
                    f"{now[key]!r}: the saved weights do not fit.",
                    f"Put network.{key}: {saved[key]!r} back to resume; or start a new run, and to continue from "
                    f"this run's LoRA set network.init_from to one of its files{example}.")
