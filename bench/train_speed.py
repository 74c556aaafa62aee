"""Training speed: Easel's loop vs a plain loop in the style of diffusers' train_text_to_image_lora.py example.

    python bench/train_speed.py PRESET [--steps 30] [--set KEY=VALUE ...]
    python bench/train_speed.py --demo            # the demo's tiny SD1.5 model and shapes dataset (no download)

Both loops train the same model, data, LoRA (rank, alpha, targets), batch size, resolution and optimizer settings
for the same number of steps. The plain loop does what the example does every step: read and resize the images,
tokenize, run the VAE and the text encoder, then the UNet. Easel caches latents and text embeddings once (the
caching time is reported separately, since a second run on the same data skips it).
Each loop runs in its own child process so that its peak memory is its own. Prints s/it, img/s, peak memory and
the img/s ratio. Steps are timed from the second to the last (the first includes one-off warm-up); each loop runs
--repeats times, alternating, and its best run counts (other jobs on a shared machine only ever slow a run).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_memory_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 2**20


class PhaseTimers:
    """Wall time spent in the step's forward (batch_loss), backward and optimizer (step + zero_grad), added up while
    the timers are installed; the rest of a step (fetching the batch, events, control files) is the overhead.
    On a GPU each phase ends with a synchronize so the time is the phase's own (CPU runs are synchronous anyway)."""

    def __init__(self):
        self.seconds = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def wrap(self, owner, name: str, phase: str):
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            import torch

            started = time.perf_counter()
            out = real(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - started
            return out

        setattr(owner, name, timed)


def bench_easel(preset_path: str, overrides: list[str], steps: int) -> dict:
    from accelerate import Accelerator

    from engine.config.load import load_preset
    from engine.events import read_all
    from engine.runs import create_run_dir
    from engine.training import loop as train
    from engine.training.modes import denoiser
    from engine.training.optimizers import OptimizerSet

    settings = [*overrides, f"training.max_steps={steps}", "sampling.prompts=[]", "output.save_every_n_steps=0",
                "output.save_every_n_minutes=0", "output.save_every_n_epochs=0"]
    preset = load_preset(preset_path, settings)
    timers = PhaseTimers()
    timers.wrap(denoiser, "batch_loss", "forward")
    timers.wrap(Accelerator, "backward", "backward")
    timers.wrap(OptimizerSet, "step", "optimizer")
    timers.wrap(OptimizerSet, "zero_grad", "optimizer")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = create_run_dir(preset, root=Path(tmp))
        code = train.run(run_dir)
        events = read_all(run_dir / "events.jsonl")
    if code != 0:
        raise SystemExit(f"the Easel run failed: {events[-1]}")
    step_times = [e["t"] for e in events if e["kind"] == "step"]
    caching = [e["t"] for e in events if e["kind"] == "status" and e["phase"] in ("caching", "checking")]
    s_per_it = (step_times[-1] - step_times[0]) / (len(step_times) - 1)
    # the phases summed over all steps, against the steps' wall time from the first step's start to the last event
    wall = step_times[-1] - (step_times[0] - s_per_it)
    inside = sum(timers.seconds.values())
    return {"loop": "easel", "s_per_it": s_per_it, "img_per_s": preset.training.batch_size * preset.training.grad_accum
            / s_per_it, "peak_memory_gb": peak_memory_gb(),
            "one_off_caching_s": (caching[-1] - caching[0]) if caching else 0.0,
            "phases_s": {k: v / len(step_times) for k, v in timers.seconds.items()},
            "outside_share": max(0.0, wall - inside) / wall}


def load_square(path, res: int):
    """What the diffusers example does per image per step: open, resize the short side to res, centre-crop, [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    im = Image.open(path).convert("RGB")
    scale = res / min(im.size)
    im = im.resize((max(res, round(im.width * scale)), max(res, round(im.height * scale))), Image.BILINEAR)
    left, top = (im.width - res) // 2, (im.height - res) // 2
    return torch.from_numpy(np.asarray(im.crop((left, top, left + res, top + res)), np.float32)).permute(2, 0, 1) \
        / 127.5 - 1


def bench_plain(preset_path: str, overrides: list[str], steps: int) -> dict:
    """A loop as diffusers' LoRA example writes it (no caches, everything encoded every step)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    from engine.config.load import load_preset
    from engine.data.layout import find_items, read_caption

    p = load_preset(preset_path, overrides)
    torch.manual_seed(p.training.seed)
    pipe = StableDiffusionPipeline.from_pretrained(p.model.path, safety_checker=None, requires_safety_checker=False)
    vae, te, tok, unet = pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet
    for m in (vae, te, unet):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=p.network.rank, lora_alpha=p.network.alpha, init_lora_weights="gaussian",
                                target_modules=list(p.network.targets) or ["to_q", "to_k", "to_v", "to_out.0"]))
    params = [q for q in unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=p.optimizers["unet"].lr)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    items = find_items(Path(p.dataset.path), p.dataset.caption_ext)
    res, bs = p.dataset.resolution_px, p.training.batch_size

    def load(path):
        return load_square(path, res)

    times = []
    for step in range(steps):
        started = time.perf_counter()
        batch = [items[(step * bs + i) % len(items)] for i in range(bs)]
        pixels = torch.stack([load(it.image) for it in batch])
        captions = [read_caption(it.caption) if it.caption else "" for it in batch]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            encoder_hidden_states = te(ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bs,)).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
            noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, p.training.clip_grad_norm or 1e9)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - started)
    s_per_it = sum(times[1:]) / (len(times) - 1)
    return {"loop": "plain", "s_per_it": s_per_it, "img_per_s": bs / s_per_it, "peak_memory_gb": peak_memory_gb()}


def child(which: str, preset: str, overrides: list[str], steps: int) -> dict:
    cmd = [sys.executable, __file__, preset, "--steps", str(steps), "--only", which]
    for item in overrides:
        cmd += ["--set", item]
    out = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env={**os.environ})
    if out.returncode != 0:
        raise SystemExit(f"{which} loop failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", nargs="?", help="preset file (SD1.x/SD2 family)")
    parser.add_argument("--demo", action="store_true", help="use the demo's tiny model and dataset")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop, alternating; the best counts")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", choices=("easel", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        result = (bench_easel if args.only == "easel" else bench_plain)(args.preset, args.overrides, args.steps)
        print(json.dumps(result))
        return 0
    preset = args.preset
    if args.demo or not preset:
        from engine.demo import prepare

        preset = str(prepare(Path(tempfile.gettempdir()) / "easel-bench-demo"))
    # the plain loop has no grad accumulation or buckets: compare at the same per-step work
    overrides = [*args.overrides, "training.grad_accum=1", "dataset.bucketing=false"]
    # alternate the loops and keep each one's best run: on a shared machine, other jobs only ever slow a run down
    runs = [child(which, preset, overrides, args.steps) for _ in range(args.repeats) for which in ("easel", "plain")]
    easel = min((r for r in runs if r["loop"] == "easel"), key=lambda r: r["s_per_it"])
    plain = min((r for r in runs if r["loop"] == "plain"), key=lambda r: r["s_per_it"])
    print(f"preset: {preset}   steps: {args.steps}   best of {args.repeats}   "
          f"threads: {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print_results(easel, plain)
    return 0


def print_results(easel: dict, plain: dict, extra_lines: tuple = ()) -> None:
    """The two loops' s/it, img/s and peak memory, Easel's caching and step breakdown, then the ratio."""
    for r in (easel, plain):
        print(f"{r['loop']:>6}: {r['s_per_it']:.4f} s/it  {r['img_per_s']:.1f} img/s  "
              f"peak memory {r['peak_memory_gb']:.2f} GB")
    print(f"easel one-off caching: {easel['one_off_caching_s']:.1f} s (skipped on later runs of the same data)")
    phases = "  ".join(f"{k} {v * 1000:.1f} ms" for k, v in easel["phases_s"].items())
    print(f"easel step breakdown: {phases}  outside those: {easel['outside_share'] * 100:.1f} % of the step")
    for line in extra_lines:
        print(line)
    print(f"speed-up (img/s): {easel['img_per_s'] / plain['img_per_s']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
