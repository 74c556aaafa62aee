"""`python -m engine sample RUN_DIR [--steps N] [--sampler S] [--eta E] [--out DIR]`: samples from the model a
run saved, for families that render their own (the DiT trained from scratch): the final model
(RUN_DIR/NAME-diffusers), else the newest checkpoint's. Prompts, seed and size are the run's sampling settings; a
DiT on condition channels takes its contexts from the run's .npz files and shows each sample beside its truth."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path


def saved_model(run_dir: Path, run_name: str) -> tuple[Path, int]:
    """(the saved model folder, its step): the final one, else the newest checkpoint's."""
    from engine.events import read_all
    from engine.failures import UserError

    final = run_dir / f"{run_name}-diffusers"
    checkpoints = sorted((run_dir / "checkpoints").glob(f"{run_name}-step*-diffusers"))
    folder = final if final.is_dir() else (checkpoints[-1] if checkpoints else None)
    if folder is None:
        raise UserError(f"{run_dir} has no saved model ({final.name} or checkpoints/*-diffusers).",
                        "Train the run until it saves (output.save_every_n_steps, or its end).")
    m = re.search(r"-step(\d+)-diffusers$", folder.name)
    if m:
        return folder, int(m[1])
    events = read_all(run_dir / "events.jsonl") if (run_dir / "events.jsonl").is_file() else []
    steps = [e.get("step") or 0 for e in events if e["kind"] == "saved" and Path(e["path"]) == folder]
    return folder, (steps[-1] if steps else 0)


def render_run(run_dir: Path, steps: int | None = None, sampler: str | None = None, eta: float | None = None,
               out_dir: Path | None = None) -> list[dict]:
    """Render the run's sample prompts from its saved model into out_dir (default RUN_DIR/samples-cli)."""
    import torch

    from engine.config.load import load_preset
    from engine.failures import UserError
    from engine.models.families import get_family
    from engine.sampling.render import save_samples
    from engine.sampling.scratch import render
    from engine.training.objectives import make_objective

    run_dir = Path(run_dir)
    preset = load_preset(run_dir / "preset.yaml")
    family = get_family(preset.model.family)
    if family.caps.base_model:
        raise UserError(f"python -m engine sample renders models trained from scratch (family dit); this run is "
                        f"{family.name}.", "Load its LoRA or model in your usual UI, or look at RUN_DIR/samples.")
    folder, step = saved_model(run_dir, preset.output.run_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    comps = family.load(dataclasses.replace(preset.model, path=str(folder)), torch.float32, device)
    comps.denoiser.to(device)
    comps.vae.to(device)
    if comps.extra.get("conditioning") == "channels":
        load_sample_contexts(preset, comps, device)
    settings = comps.extra["dit_settings"]
    comps.extra["objective"] = make_objective(settings["objective"], comps.alphas_cumprod,
                                              flow_path=settings["flow_path"])
    changes = {k: v for k, v in (("steps", steps), ("sampler", sampler), ("ddim_eta", eta)) if v is not None}
    sampling = dataclasses.replace(preset.sampling, **changes)
    prompts = list(sampling.prompts) or ["sample"]
    size = (sampling.width_px or preset.dataset.resolution_px, sampling.height_px or preset.dataset.resolution_px)
    images = render(family, comps, prompts, sampling, sampling.seed, size)
    return save_samples(images, prompts, sampling, size, out_dir or run_dir / "samples-cli", step,
                        extra_info={"Model": folder.name})


def load_sample_contexts(preset, comps, device: str) -> None:
    """conditioning channels: the contexts (and ground truths, shown beside each sample) of the run's sample
    files, read from its dataset.path as training read them: the first validation files first."""
    from engine.data.npz import prepare_npz_batches

    v = preset.validation
    prepare_npz_batches(preset.dataset, preset.training, comps, device, validation=v if v.fraction > 0 else None)


def cli(argv: list[str]) -> int:
    from engine.failures import UserError

    parser = argparse.ArgumentParser(prog="python -m engine sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's sampling.steps)")
    parser.add_argument("--sampler", help="euler, midpoint, rk4, dopri5 (flow); ddim, ddpm (DDPM)")
    parser.add_argument("--eta", type=float, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/samples-cli)")
    args = parser.parse_args(argv)
    try:
        results = render_run(args.run_dir, args.steps, args.sampler, args.eta, args.out)
    except UserError as e:
        print(f"error: {e.message}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    for result in results:
        print(result["path"], flush=True)
    return 0
