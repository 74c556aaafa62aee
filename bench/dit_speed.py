"""DiT training speed: Easel's loop vs a plain PyTorch loop on the same DiT, data and settings.

    python bench/dit_speed.py [--steps 40] [--repeats 3] [--set KEY=VALUE ...]

Builds the demo's shapes dataset and DiT preset (engine.demo.prepare_dit: presets/dit-flow-matching.yaml at the
demo's size) in a temporary folder; --set changes that preset for both loops (e.g. --set training.batch_size=8).
Easel's loop is engine.training.loop.run on a run folder (bench/train_speed.py's bench_easel, with its phase
timers). The plain loop trains a DiTTransformer2DModel of the same config with the same batch size, resolution,
objective (flow matching on the condot path: t ~ U(0, 1), x_t = (1 - t) x0 + t noise, target noise - x0),
gradient clipping, AdamW settings and learning rate (no LR schedule: its cost is nil), in the preset's precision
(fp32 on a CPU, autocast bf16/fp16 on a GPU); every step it reads and resizes the batch's images (PIL + numpy, as
train_speed's load_square), then forward, backward, AdamW step. Easel reads the images once into its cache (the
one-off caching time is printed separately).
Each loop runs in its own child process (its peak memory is its own), --repeats times, alternating; each loop's
best run counts. Steps are timed from the second to the last. Prints s/it, img/s, peak memory, the img/s ratio
and both loops' step breakdowns.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import train_speed
from train_speed import PhaseTimers, bench_easel, load_square, peak_memory_gb, print_results

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def plain_dit_kwargs(preset) -> dict:
    """DiTTransformer2DModel's arguments for the preset, written out as a plain script would. They match
    engine/models/families/dit/record.py's build_transformer (tests/test_dit_speed_smoke.py checks that), which sizes
    the position table for 64 px whatever dataset.resolution_px is."""
    dit = preset.model.dit
    return {"num_attention_heads": dit.heads, "attention_head_dim": dit.width // dit.heads, "in_channels": 3,
            "out_channels": 3, "num_layers": dit.depth, "sample_size": 64, "patch_size": dit.patch_size,
            "num_embeds_ada_norm": 1000, "norm_num_groups": 1}


def dataset_items(folder: Path, conditioning: str) -> list[tuple[Path, int]]:
    """(image, class label): label 0 for everything (conditioning none), else the index of the image's
    sub-folder among the sorted sub-folders."""
    if conditioning != "class":
        return [(p, 0) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [(p, k) for k, d in enumerate(classes) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXTS]


def bench_plain(preset_path: str, overrides: list[str], steps: int) -> dict:
    """A plain PyTorch loop: no cache, the images read and resized every step."""
    import torch
    import torch.nn.functional as F
    from diffusers import DiTTransformer2DModel

    from engine.config.load import load_preset

    p = load_preset(preset_path, overrides)
    t_cfg, opt_cfg = p.training, p.optimizers["unet"]
    if p.model.dit.space != "pixel" or t_cfg.objective not in ("flow", "auto") or t_cfg.flow_path != "condot":
        raise SystemExit("the plain loop does pixel-space flow matching on the condot path only")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t_cfg.precision) if device == "cuda" else None
    if device == "cuda":  # what Easel's setup turns on too (engine/training/speed.py)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(t_cfg.seed)
    model = DiTTransformer2DModel(**plain_dit_kwargs(p)).to(device)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    o = opt_cfg.params
    opt = torch.optim.AdamW(params, lr=opt_cfg.lr, betas=tuple(o.get("betas", (0.9, 0.999))),
                            eps=o.get("eps", 1e-8), weight_decay=o.get("weight_decay", 0.01),
                            amsgrad=o.get("amsgrad", False))
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    items = dataset_items(Path(p.dataset.path), p.model.dit.conditioning)
    res, bs = p.dataset.resolution_px, t_cfg.batch_size

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    phases = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    times = []
    for step in range(steps):
        started = time.perf_counter()
        batch = [items[(step * bs + i) % len(items)] for i in range(bs)]
        x0 = torch.stack([load_square(path, res) for path, _ in batch]).to(device)
        labels = torch.tensor([label for _, label in batch], dtype=torch.long, device=device)
        sync()
        t_data = time.perf_counter()
        noise = torch.randn_like(x0)
        t = torch.rand(bs, device=device)
        x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            pred = model(hidden_states=x_t, timestep=t * 1000, class_labels=labels, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise - x0)
        sync()
        t_fwd = time.perf_counter()
        (scaler.scale(loss) if scaler else loss).backward()
        sync()
        t_bwd = time.perf_counter()
        if scaler:
            scaler.unscale_(opt)
        if t_cfg.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, t_cfg.clip_grad_norm)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # one host sync per step, as Easel's loop has
        ended = time.perf_counter()
        times.append(ended - started)
        if step > 0:  # the first step is warm-up, left out as in s/it
            for k, v in zip(phases, (t_data - started, t_fwd - t_data, t_bwd - t_fwd, ended - t_bwd)):
                phases[k] += v
    s_per_it = sum(times[1:]) / (len(times) - 1)
    return {"loop": "plain", "s_per_it": s_per_it, "img_per_s": bs / s_per_it, "peak_memory_gb": peak_memory_gb(),
            "phases_s": {k: v / (len(times) - 1) for k, v in phases.items()}}


class PhaseTimersAfterWarmup(PhaseTimers):
    """train_speed's PhaseTimers, zeroed when the first (warm-up) step is reported, so that the breakdown covers
    the same steps as s/it (bench_easel's own covers every step, the first one's one-off costs included)."""

    def __init__(self):
        super().__init__()
        from engine.training import loop as train

        real, seconds = train.report_step, self.seconds

        def report_step(r, *args, **kwargs):
            if r.step == 1:
                seconds.update(dict.fromkeys(seconds, 0.0))
            return real(r, *args, **kwargs)

        train.report_step = report_step


def bench_easel_after_warmup(preset_path: str, overrides: list[str], steps: int) -> dict:
    """bench_easel with the breakdown over steps 2..N: per step and the share outside the phases, against s/it."""
    train_speed.PhaseTimers = PhaseTimersAfterWarmup
    result = bench_easel(preset_path, overrides, steps)
    # bench_easel divides the totals by every step (N); they now cover N - 1
    result["phases_s"] = {k: v * steps / (steps - 1) for k, v in result["phases_s"].items()}
    result["outside_share"] = max(0.0, 1 - sum(result["phases_s"].values()) / result["s_per_it"])
    return result


def child(which: str, preset: str, overrides: list[str], steps: int) -> dict:
    cmd = [sys.executable, __file__, "--preset", preset, "--steps", str(steps), "--only", which]
    for item in overrides:
        cmd += ["--set", item]
    out = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env={**os.environ}, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{which} loop failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop, alternating; the best counts")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--preset", help=argparse.SUPPRESS)  # the children's: the parent's prepared preset
    parser.add_argument("--only", choices=("easel", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is warm-up and is not timed)")
    if args.only:
        result = (bench_easel_after_warmup if args.only == "easel" else bench_plain)(args.preset, args.overrides, args.steps)
        print(json.dumps(result))
        return 0
    from engine.demo import prepare_dit

    # the plain loop has no grad accumulation, buckets or EMA: compare at the same per-step work
    overrides = [*args.overrides, "training.grad_accum=1", "dataset.bucketing=false"]
    with tempfile.TemporaryDirectory(prefix="easel-dit-bench-") as tmp:
        preset = str(prepare_dit(Path(tmp)))
        runs = [child(which, preset, overrides, args.steps) for _ in range(args.repeats) for which in ("easel", "plain")]
    easel = min((r for r in runs if r["loop"] == "easel"), key=lambda r: r["s_per_it"])
    plain = min((r for r in runs if r["loop"] == "plain"), key=lambda r: r["s_per_it"])
    import torch

    print(f"DiT demo preset{' + ' + ' '.join(args.overrides) if args.overrides else ''}   steps: {args.steps}   "
          f"best of {args.repeats}   device: {'cuda' if torch.cuda.is_available() else 'cpu'}   "
          f"threads: {os.environ.get('OMP_NUM_THREADS', 'default')}")
    phases = "  ".join(f"{k} {v * 1000:.1f} ms" for k, v in plain["phases_s"].items())
    print_results(easel, plain, (f"plain step breakdown: {phases}",
                                 "(breakdowns: ms per step over the steps that s/it times, the warm-up first step "
                                 "left out)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
