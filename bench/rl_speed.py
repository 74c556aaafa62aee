"""RL speed and memory: GRPO vs DiffusionNFT on the same model, settings and reward.

    python bench/rl_speed.py                 # the tiny DiT (full fine-tune) and the demo's tiny SD 1.5 (LoRA), CPU or GPU
    python bench/rl_speed.py --steps 120

For each (model, method) in its own child process (so its peak memory is its own): the mean reward of the first
and last 3 RL epochs (brightness: a reward these tiny models can learn), s per optimizer step (the rollout's share
included), rollout s per epoch, peak memory (CUDA allocated, else the process's RSS), and what RL keeps beside the
model: the trained weights, their EMA, the NFT old model, the KL reference (a LoRA's reference is the adapter
switched off: 0 bytes). The guide's figures are for full fine-tuning: GRPO ~2x the parameters, NFT ~3x.
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

COMMON = ["training.mode=rl", "rl.warmup_steps=0", "rl.rewards={brightness: 1.0}", "rl.num_images_per_prompt=4",
          "rl.num_inference_steps=8", "rl.guidance_scale=1.0", "training.batch_size=2", "sampling.prompts=[]",
          "output.save_every_n_steps=0", "training.ema.enabled=true", "training.precision=fp32"]
MODELS = {
    "dit-full": ["model.dit.depth=2", "model.dit.width=64", "model.dit.heads=2", "model.dit.patch_size=4",
                 "dataset.resolution_px=32", "training.max_epochs=0"],
    "sd15-lora": ["dataset.repeats=1"],
}
METHODS = {"grpo": ["rl.method=grpo", "rl.kl_beta=0.1", "optimizers.unet.lr=1e-3", "training.ema.decay=0.9999"],
           "nft": ["rl.method=nft", "rl.kl_beta=0.01", "rl.decay_type=1", "optimizers.unet.lr=1e-2",
                   "training.ema.decay=0.999"]}


def child(model: str, method: str, steps: int, work: Path) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from engine.config.load import load_preset
    from engine.events import read_all
    from engine.rl import phase
    from engine.rl.mode import RL_MODE
    from engine.runs import create_run_dir
    from engine.training import loop

    prompts = work / "prompts.txt"
    prompts.write_text("a picture\nanother picture\n", encoding="utf-8")
    if model == "dit-full":
        base = ROOT / "presets" / "dit-flow-matching.yaml"
    else:
        from engine.demo import prepare

        base = prepare(work / "demo")
    overrides = [*COMMON, *MODELS[model], *METHODS[method], f"training.max_steps={steps}", f"rl.prompts_file={prompts}"]
    run_dir = create_run_dir(load_preset(base, overrides), root=work / "runs")
    held = {}
    real_init = phase.RlTrainer.__init__

    def measure(self, r, steps):  # what RL keeps beside the model, counted once it is built
        real_init(self, r, steps)
        size = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
        held.update(trained=size(r.params), ema=size(r.ema.shadow) if r.ema else 0,
                    old=size(self.old.values) if self.old else 0,
                    reference=0 if r.preset.network.type != "full" else size(r.params))
    phase.RlTrainer.__init__ = measure
    started = time.perf_counter()
    code = loop.run(run_dir, modes={"rl": RL_MODE})
    wall = time.perf_counter() - started
    events = read_all(run_dir / "events.jsonl")
    if code != 0:
        return {"error": next((e["message"] for e in events if e["kind"] == "error"), f"exit {code}")}
    curve = [e["reward_mean"] for e in events if e["kind"] == "rl"]
    rollouts = [e for e in events if e["kind"] == "status" and e["phase"] == "rollout"]
    step_times = [e["s_per_it"] for e in events if e["kind"] == "step"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"reward_start": sum(curve[:3]) / 3, "reward_end": sum(curve[-3:]) / 3, "epochs": len(curve),
            "s_per_step": step_times[-1], "wall_s": wall, "rollouts": len(rollouts), "peak_gb": peak, **held}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(child(*args.child, args.steps, Path(work))))
        return 0
    print(f"{'model':10} {'method':6} {'reward start -> end':>22} {'s/step':>8} {'wall s':>7} {'peak GB':>8} "
          f"{'trained MB':>10} {'EMA MB':>7} {'old MB':>7} {'ref MB':>7} {'kept/trained':>12}")
    for model in MODELS:
        for method in METHODS:
            out = subprocess.run([sys.executable, __file__, "--child", model, method, "--steps", str(args.steps)],
                                 capture_output=True, text=True, encoding="utf-8", errors="replace")
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
            try:
                f = json.loads(line)
            except json.JSONDecodeError:
                print(f"{model:10} {method:6} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            if "error" in f:
                print(f"{model:10} {method:6} failed: {f['error']}")
                continue
            mb = lambda n: n / 2**20  # noqa: E731
            kept = (f["ema"] + f["old"] + f["reference"]) / f["trained"]
            print(f"{model:10} {method:6} {f['reward_start']:10.4f} -> {f['reward_end']:.4f} {f['s_per_step']:8.3f} "
                  f"{f['wall_s']:7.1f} {f['peak_gb']:8.2f} {mb(f['trained']):10.2f} {mb(f['ema']):7.2f} "
                  f"{mb(f['old']):7.2f} {mb(f['reference']):7.2f} {kept:11.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
