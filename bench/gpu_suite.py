"""One short GPU session, one table: Easel's LoRA training step against a plain diffusers-example loop, for SD1.5,
SDXL, FLUX.1-dev, Z-Image and FLUX.2 klein (base 4B and 9B) at their real sizes. Nothing is downloaded; no model is
written to disk (a temporary folder gets a few small images, their latent and text caches, and the events files).

    python bench/gpu_suite.py                  # a CUDA GPU (H100 / H200): 19 cases, the budget's 10 in ~7 minutes
    python bench/gpu_suite.py --only flux2     # the four klein cases (~3.5 minutes with start-up)
    python bench/gpu_suite.py --cpu-smoke      # the same code with every model tiny, on the CPU (~1 minute on 2 cores)
    python bench/gpu_suite.py --only zimage    # the cases whose name contains 'zimage'; --budget-s 300 stops sooner
    python bench/gpu_suite.py --cpu-real       # SD1.5 at its real size and 512 px on the CPU, batch 1 (~4 minutes)

On the lent GPU machine (python3 there has torch, transformers, peft, accelerate, but not diffusers or bitsandbytes):
once, here, `echo /.whl/ >> .git/info/exclude` and `python -m pip download --no-deps --only-binary=:all:
--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d .whl
diffusers==0.42.1 bitsandbytes==0.50.2` (49 MB); then run with carry [".whl"]: `python3 -m pip install -q --no-index
--no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu_suite.py`.
Without bitsandbytes the suite still runs, with adamw instead of adamw8bit, and says so.

Cases, in the order they run: first one per preset (a family's VRAM tier; klein has two sizes in the 16 GB tier),
so that a session cut short by --budget-s still has the tiers' verdicts, then the second resolution of each tier
while the budget lasts. The SD1.5, SDXL, FLUX.1 and Z-Image first cases take about 6 minutes on an H100 and the four
klein cases about 3 more (the expected times are at CASES), which the default 7.5-minute budget does not hold: it
runs the first klein case (9B 16 GB, the preset closest to its card) and skips the other three (9B 24 GB, 4B 12 GB,
4B 16 GB) and the six second resolutions; `--only flux2` runs the four klein cases alone. SD1.5 512 px batch 4
(presets/sd15-lora.yaml), SDXL 1024 px batch 1 (sdxl-lora.yaml); FLUX.1-dev 1024 then 512 px in each tier
(flux-lora-24gb/-16gb/-12gb.yaml: fp8 base, the preset's block swap (0/16/34 blocks as written), adamw8bit); Z-Image
512 and 1024 px in each tier (zimage-lora-24gb/-16gb/-12gb.yaml, and 512 px for -8gb.yaml: bf16 base, batch 2 and
adamw on 24 GB; fp8 base and adamw8bit below; 18 blocks swapped on 8 GB; model.text_encoder_fp8 where a preset sets
it); FLUX.2 klein base at 1024 px, batch 1, adamw8bit (flux2-klein9b-lora-16gb.yaml: fp8 base and Qwen3-8B in
fp8; flux2-klein9b-lora-24gb: bf16 base, 4 single blocks swapped; flux2-klein4b-lora-12gb: fp8 base and Qwen3-4B in
fp8; flux2-klein4b-lora-16gb: bf16, no saver). The 16 and 12 GB Z-Image presets differ only in their resolution, so
16gb 1024 and 12gb 1024 (and the two 512s) are the same run with two tier verdicts: one of each pair runs first.
Every case trains in bf16 at grad_accum 1 without buckets, at the batch its name or preset says (SD1.5 4, Z-Image
24 GB 2 as its preset, 1 elsewhere), the rest as its preset says (the SD1.5 preset's fp16 becomes bf16: the MFU is
against the bf16 peak).

The models are random-init at their real sizes (SD1.5 UNet 0.86 B, SDXL UNet 2.57 B, FLUX.1-dev 11.9 B, Z-Image
6.15 B, klein 4B 3.88 B and 9B 9.08 B, CLIP-L, OpenCLIP-bigG, T5-XXL 4.76 B, Qwen3-4B 4.02 B, Qwen3-8B 8.19 B, the
VAEs; Z-Image's VAE is FLUX.1's AE, klein's the 32-channel FLUX.2 AE), built straight on the GPU in the compute
dtype; the tokenizers are the tiny in-memory ones (engine/models/tiny.py's, zimage/tiny.py's Qwen tokenizer with its
chat template, which klein shares), whose ids index the real-size embedding tables. T5-XXL and the Qwen3s are real
size in the plain loops: 9.5 / 8 / 16.4 GB and ~10-20 ms a caption on an H100, well inside the budget.

Easel's step is Easel's code from setup() on, with family.load replaced by the in-memory models: what the family's
loading does as it reads the transformer (fp8 storage before the LoRA: families/flux/loading.py, zimage/ and
flux2/loading.py's store()), configure_for_training, add_network, store_base, store_text_encoders, then build_run on
a small generated dataset (so prepare_batches caches its latents and text embeddings with the real VAE and text
encoders, parks them in CPU RAM, and place_denoiser applies block swap), then engine/training/loop.py's loop() runs
the steps.
The plain loop is bench/train_speed.py's bench_plain written for each family the way diffusers' example scripts
train (train_text_to_image_lora[_sdxl].py, train_dreambooth_lora_flux.py, train_dreambooth_lora_z_image.py,
train_dreambooth_lora_flux2_klein.py): read and resize the images, tokenize, VAE and text encoders every step, the
same denoiser (LoRA, fp8, block swap, checkpointing), the same optimizer type. (The Z-Image and klein examples encode
per-image captions once before training; encoding them every step, as the other examples do, keeps the plain loops
alike: Qwen3 costs a few % of a step. The klein example has no fp8 text encoder: with model.text_encoder_fp8 its
loop runs the bare Qwen3Model, as Easel does, without the causal LM's vocabulary logits.)

Columns: s/it and img/s (warm steps, timed between two synchronizes), peak GB (torch.cuda.max_memory_allocated of
the training steps, reset per loop: caching is not in it), MFU (3 x the forward FLOPs of one step, counted with
torch.utils.flop_counter.FlopCounterMode on one forward, over s/it and the card's dense bf16 peak), fwd TF (those
forward TFLOP), easel/plain (img/s ratio), tier (the VRAM tier's budget in GB), fits (the peak plus 0.6 GB of CUDA
context within the tier), pred GB (engine.models.fit's prediction of the same peak, from the same preset), wall s
(the case's wall time, its model build included), note (steps timed per loop; what the base is stored in, checked on
the model: fp8 share, blocks swapped, text encoder in fp8).
Each case prints its row when done; no case starts once the total would pass --budget-s (450 s = 7.5 minutes),
counting a model rebuild where the case needs one.

--cpu-real is the CPU's honest ratio: the tiny demo model's VAE and text encoder cost almost nothing beside its UNet,
so the time caching saves there says little about a real model. Real-size SD1.5 keeps the real proportions (at
512 px its VAE encode is ~40 % of the example's step). It trains in fp32, as Easel does on the CPU, at batch 1 (the
CPU takes ~10 s a step), and runs only the SD1.5 case unless --only says otherwise.
"""
from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts the imports too

import argparse
import gc
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_S = 450.0          # 7.5 minutes: the GPU session is 15 minutes, start-up and one rerun included
CUDA_CONTEXT_GB = 0.6     # on the card but outside torch's allocator (engine/models/fit/'s figure)
GB = 2**30

# Dense bf16 tensor-core peaks, TFLOP/s, by torch.cuda.get_device_name (first match wins; NVIDIA's spec sheets).
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 80GB HBM3", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0),
                    ("H100 PCIe", 756.0), ("A100", 312.0), ("L40S", 362.0), ("RTX 4090", 165.2),
                    ("RTX 3090", 71.0))


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    preset: str               # presets/<preset>.yaml
    px: int                   # resolution (the CPU smoke uses px // 8)
    batch: int
    tier_gb: int | None = None
    expected_s: float = 40.0  # a first guess of the case's wall time on an H100 (its model build included when it
                              # is the family's first), for the budget until a case of the family has run


# One per preset first (each tier's verdict on the preset's own resolution, or on the resolution above it where the
# preset sits between two: FLUX 12 GB and Z-Image 12 GB train at 768), ordered so the models are built as few times
# as possible (fp8 Z-Image once for three tiers, bf16 once for 24 GB and its second resolution); then what only adds
# a resolution. Expected H100 times: ~6 minutes for the first 9 rows with start-up; the four klein rows ~3 minutes
# more, so the default --budget-s (7.5 minutes) reaches the first of them (klein 9B 16 GB) and skips the other three
# and every second resolution: `--only flux2` runs the four (~3.5 minutes with start-up), Z-Image's seven ~4 minutes
# alone (--only zimage).
CASES = (
    Case("sd15 512 bs4", "sd15", "sd15-lora", 512, 4, expected_s=30),
    Case("sdxl 1024 bs1", "sdxl", "sdxl-lora", 1024, 1, expected_s=40),
    Case("flux 24gb 1024", "flux", "flux-lora-24gb", 1024, 1, 24, expected_s=65),   # + FLUX's build, ~25 s
    Case("flux 16gb 1024", "flux", "flux-lora-16gb", 1024, 1, 16, expected_s=35),
    Case("flux 12gb 1024", "flux", "flux-lora-12gb", 1024, 1, 12, expected_s=40),   # 34 blocks cross PCIe
    Case("zimage 16gb 1024", "zimage", "zimage-lora-16gb", 1024, 1, 16, expected_s=45),  # + the fp8 build, ~15 s
    Case("zimage 12gb 512", "zimage", "zimage-lora-12gb", 512, 1, 12, expected_s=20),
    Case("zimage 8gb 512", "zimage", "zimage-lora-8gb", 512, 1, 8, expected_s=25),   # 18 blocks cross PCIe
    Case("zimage 24gb 1024", "zimage", "zimage-lora-24gb", 1024, 2, 24, expected_s=45),  # + the bf16 build
    # FLUX.2 klein: four presets, four builds (the 4B and the 9B, each in fp8 with Qwen3 in fp8 and in bf16); the
    # 9B's first, its two tiers the closest to their cards (fit: 12.5 of 16 GB, 19.8 of 24)
    Case("flux2 9b 16gb 1024", "flux2", "flux2-klein9b-lora-16gb", 1024, 1, 16, expected_s=50),  # + the build, ~25 s
    Case("flux2 9b 24gb 1024", "flux2", "flux2-klein9b-lora-24gb", 1024, 1, 24, expected_s=50),  # 4 blocks swapped
    Case("flux2 4b 12gb 1024", "flux2", "flux2-klein4b-lora-12gb", 1024, 1, 12, expected_s=35),  # + the build, ~12 s
    Case("flux2 4b 16gb 1024", "flux2", "flux2-klein4b-lora-16gb", 1024, 1, 16, expected_s=32),
    Case("zimage 24gb 512", "zimage", "zimage-lora-24gb", 512, 2, 24, expected_s=22),
    Case("flux 24gb 512", "flux", "flux-lora-24gb", 512, 1, 24, expected_s=50),     # + FLUX's rebuild
    Case("flux 16gb 512", "flux", "flux-lora-16gb", 512, 1, 16, expected_s=25),
    Case("flux 12gb 512", "flux", "flux-lora-12gb", 512, 1, 12, expected_s=30),
    Case("zimage 16gb 512", "zimage", "zimage-lora-16gb", 512, 1, 16, expected_s=35),  # the 12gb 512 run again
    Case("zimage 12gb 1024", "zimage", "zimage-lora-12gb", 1024, 1, 12, expected_s=25),  # the 16gb 1024 run again
)

# Blocks in the real transformer and in the --cpu-smoke one (FLUX 19 + 38 and 2 + 4; Z-Image 2 + 2 + 30 and
# 1 + 1 + 1; klein 4B 5 + 20, 9B 8 + 24 and 1 + 1): the smoke swaps the same share of its blocks as the preset does
# of the real ones.
BLOCKS = {"flux": (57, 6), "zimage": (34, 3), "flux2 4b": (25, 2), "flux2 9b": (32, 2)}


def model_size(family: str, model_path: str) -> str:
    """Which model of the family model.path names where the family has two sizes: klein "4b" | "9b"; else ""."""
    if family != "flux2":
        return ""
    from engine.models.families.flux2.memory import variant_of

    return variant_of(model_path)


# ------------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU: proves the script runs")
    parser.add_argument("--cpu-real", action="store_true", help="real-size SD1.5 on the CPU at batch 1: the ratio")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="start no case past this total wall time")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset setting for every case and both loops (e.g. training.gradient_checkpointing="
                             "false)")
    args = parser.parse_args()
    if args.cpu_smoke or args.cpu_real:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a GPU machine
    if args.cpu_real and not args.only:
        args.only = "sd15"   # SDXL and FLUX at real size take many minutes a step on a CPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    import torch

    if not (args.cpu_smoke or args.cpu_real) and not torch.cuda.is_available():
        print("No CUDA GPU: run with --cpu-smoke to check the script on the CPU, or --cpu-real for real-size SD1.5 "
              "on the CPU.", file=sys.stderr)
        return 2
    from engine.training.setup import quiet_libraries

    quiet_libraries()
    suite = Suite(smoke=args.cpu_smoke, budget_s=args.budget_s, cpu_real=args.cpu_real, overrides=args.overrides)
    print_header(suite)
    cases = [c for c in CASES if args.only in c.name]
    if args.overrides:
        print(f"Settings for every case: {' '.join(args.overrides)}", flush=True)
    rows, models, stopped, unbuildable = [], None, False, set()
    with tempfile.TemporaryDirectory(prefix="easel-gpu-suite-") as tmp:
        for case in cases:
            elapsed = time.monotonic() - STARTED
            expected = suite.expected_s(case, models.key if models is not None else None)
            if stopped or elapsed + expected > args.budget_s:
                stopped = True
                rows.append(Row(case, note=f"skipped: {elapsed:.0f} s + ~{expected:.0f} s would pass the "
                                           f"{args.budget_s:.0f} s budget"))
                print(f"# {case.name}: skipped (time budget)", flush=True)
                continue
            started = time.monotonic()
            try:
                key = suite.model_key(case)
                if key in unbuildable:
                    raise RuntimeError("these models failed to build in an earlier case (its traceback is above)")
                if models is None or models.key != key:
                    models = release(models)   # the last family's models leave the GPU before the next is built
                    collect()
                    unbuildable.add(key)       # until the build returns
                    models = suite.build_models(case)
                    unbuildable.discard(key)
                row = suite.run_case(case, models, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one failing case must not cost the others their rows
                traceback.print_exc()
                row = Row(case, note=f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            row.wall_s = time.monotonic() - started
            suite.seen(case, row)
            rows.append(row)
            print(f"# {case.name}: done in {row.wall_s:.1f} s (build {row.build_s:.1f} s)  "
                  f"total {time.monotonic() - STARTED:.0f} s{suite.resident()}\n#   {format_row(row, suite)}",
                  flush=True)   # the row now: a run killed at its time limit still shows the finished cases
        models = release(models)
    print_table(rows, suite)
    return 1 if any(r.note.startswith("error") for r in rows) else 0


# ------------------------------------------------------------------------------------------------- the suite

@dataclass
class Row:
    case: Case
    easel: dict = field(default_factory=dict)   # s_it, img_s, peak_gb, steps
    plain: dict = field(default_factory=dict)
    fwd_flops: float = 0.0                      # forward FLOPs of one optimizer step (all its micro-batches)
    pred_gb: float | None = None                # engine.models.fit's predicted max_memory_allocated
    build_s: float = 0.0
    wall_s: float = 0.0
    note: str = ""


@dataclass
class Models:
    """One family's models, shared by the cases that train the same network on them (FLUX's six; Z-Image's fp8 five
    and bf16 two; each klein case its own)."""

    key: tuple
    family: str
    comps: object             # engine.models.families.base.Components
    trainables: dict          # add_network's result
    weight_dtype: object
    build_s: float


class Suite:
    def __init__(self, smoke: bool, budget_s: float = BUDGET_S, cpu_real: bool = False, overrides=()):
        import torch

        self.overrides = list(overrides)

        self.smoke = smoke
        self.cpu_real = cpu_real   # real sizes on the CPU: batch 1, fp32, the fewest timed steps
        self.deadline = STARTED + budget_s
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.gpu_name = torch.cuda.get_device_name(0) if self.device == "cuda" else "cpu"
        self.peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS if k in self.gpu_name), None)
        self.optimizer_note = ""
        self.optimizer_override = self._check_bitsandbytes()
        self.walls: dict[str, float] = {}   # family -> the last case's wall time without its model build
        self.builds: dict[str, float] = {}  # family -> its last model build's time

    # -- the budget
    def expected_s(self, case: Case, resident_key: tuple | None = None) -> float:
        """The case's expected wall time: its first guess until the family has run a case, then that case's time
        plus a build when the models on the GPU are not this case's (Z-Image's bf16 and fp8 bases, FLUX after it)."""
        if self.smoke:
            return 5.0
        if self.cpu_real:
            return 240.0
        if case.family not in self.walls:
            return case.expected_s
        rebuild = self.builds.get(case.family, 0.0) if self.model_key(case) != resident_key else 0.0
        return self.walls[case.family] + rebuild

    def seen(self, case: Case, row: Row) -> None:
        self.walls[case.family] = max(5.0, row.wall_s - row.build_s)
        if row.build_s:
            self.builds[case.family] = row.build_s

    # -- the presets
    def preset(self, case: Case, dataset_dir: Path, as_on_gpu: bool = False):
        """The case's preset; as_on_gpu: as a GPU session trains it (real size, bf16), for the prediction column."""
        from engine.config.load import load_preset

        tiny = self.smoke and not as_on_gpu
        px = case.px // 8 if tiny else case.px
        precision = "fp32" if self.device == "cpu" and not as_on_gpu else "bf16"   # what Easel trains in on the CPU
        batch = case.batch if as_on_gpu else self.batch(case)
        settings = [f"dataset.path={dataset_dir}", f"dataset.resolution_px={px}", "dataset.bucketing=false",
                    f"training.batch_size={batch}", "training.grad_accum=1",
                    f"training.precision={precision}",
                    "training.max_steps=1000", "sampling.prompts=[]", "output.save_every_n_steps=0",
                    "output.save_every_n_minutes=0", "output.save_every_n_epochs=0"]
        if self.optimizer_override:
            settings.append(f"optimizers.unet.type={self.optimizer_override}")
        settings += self.overrides
        preset = load_preset(ROOT / "presets" / f"{case.preset}.yaml", settings)
        if tiny and preset.model.block_swap:  # the same share of the tiny model's blocks (BLOCKS)
            real_blocks, tiny_blocks = BLOCKS[" ".join(w for w in (case.family, model_size(case.family,
                                                                                   preset.model.path)) if w)]
            swap = max(1, round(preset.model.block_swap * tiny_blocks / real_blocks))
            preset = load_preset(ROOT / "presets" / f"{case.preset}.yaml", settings + [f"model.block_swap={swap}"])
        return preset

    def batch(self, case: Case) -> int:
        return 1 if self.cpu_real else case.batch

    def model_key(self, case: Case) -> tuple:
        p = self.preset(case, Path("."))
        n = p.network
        return (case.family, p.model.path, n.type, n.rank, n.alpha, tuple(n.targets), n.lora_modulation,
                p.model.quantize_base, p.model.text_encoder_fp8, p.training.gradient_checkpointing)

    # -- the models
    def build_models(self, case: Case) -> Models:
        """The family's models in memory, then setup()'s steps between family.load and build_run."""
        import torch

        from engine.events import EventWriter
        from engine.models.families import capabilities, get_family
        from engine.training.network import add_network
        from engine.training.precision import choose_precision
        from engine.training.setup import configure_for_training, store_base, store_text_encoders

        started = time.monotonic()
        preset = self.preset(case, Path("."))
        family = get_family(case.family)
        with tempfile.TemporaryDirectory() as tmp, EventWriter(Path(tmp) / "events.jsonl") as events:
            _, _, weight_dtype = choose_precision(preset.training, preset.network, events,
                                                  family.caps.default_precision)
            torch.manual_seed(preset.training.seed)
            size = model_size(case.family, preset.model.path)
            comps = BUILDERS[case.family](self.smoke, self.device, weight_dtype, **({"variant": size} if size else {}))
            if case.family in AS_LOADED:
                AS_LOADED[case.family](comps.denoiser, preset.model, weight_dtype)
            configure_for_training(comps, preset.training, family)
            trainables = add_network(family, comps, preset.network, preset.training.gradient_checkpointing)
            store_base(comps, preset.model, weight_dtype, events, capabilities(case.family).block_lists)
            store_text_encoders(comps, preset.model, weight_dtype, events)
        sync()
        return Models(self.model_key(case), case.family, comps, trainables, weight_dtype, time.monotonic() - started)

    # -- one case
    def run_case(self, case: Case, models: Models, work: Path) -> Row:
        """Easel's loop, then the plain loop, on the same models, data and settings."""
        row = Row(case, build_s=models.build_s)
        models.build_s = 0.0  # the build counts in the first case on these models only
        px = case.px // 8 if self.smoke else case.px
        images = max(4, 2 * self.batch(case))
        data = write_dataset(work / f"data-{case.family}-{px}-{images}", images, px)
        preset = self.preset(case, data)
        # the smoke shows what the GPU session will predict: the case at its real size in bf16
        row.pred_gb = predicted_peak_gb(self.preset(case, data, as_on_gpu=True) if self.smoke else preset)
        row.easel, row.fwd_flops, row.note = self.easel_loop(case, models, preset, work / f"run-{px}-{case.preset}")
        if self.cpu_real:
            row.note = ", ".join(w for w in (row.note, "batch 1, fp32, CPU") if w)
        row.plain = self.plain_loop(case, models, preset, data)
        return row

    def easel_loop(self, case: Case, models: Models, preset, run_dir: Path) -> tuple[dict, float, str]:
        """(timing, forward FLOPs per step, what the model trained on) of Easel's own set-up and loop."""
        from engine.events import EventWriter, read_all
        from engine.models.families import capabilities, get_family
        from engine.training.precision import choose_precision
        from engine.training.setup import build_run, configure_for_training

        comps = models.comps
        unswap(comps)  # the previous case's block swap: build_run places the denoiser anew
        run_dir.mkdir(parents=True, exist_ok=True)
        with EventWriter(run_dir / "events.jsonl") as events:
            device, mixed, weight_dtype = choose_precision(preset.training, preset.network, events,
                                                           capabilities(case.family).default_precision)
            configure_for_training(comps, preset.training, get_family(case.family))
            r = build_run(run_dir, preset, events, get_family(case.family), comps, models.trainables, device, mixed,
                          weight_dtype)
            flops = forward_flops(r)
            reset_peak()
            timing = self.timed(lambda n: easel_steps(r, n), preset.training.batch_size * preset.training.grad_accum)
        for message in sorted({e["message"] for e in read_all(run_dir / "events.jsonl") if e["kind"] == "warning"}):
            print(f"# {case.name}: warning from the engine: {message}", flush=True)
        return timing, flops, storage_words(comps)

    def plain_loop(self, case: Case, models: Models, preset, data: Path) -> dict:
        """The example's loop: everything on the device, everything encoded every step (it never parks a part)."""
        import torch

        comps, device = models.comps, self.device
        for module in (comps.vae, *comps.text_encoders):
            module.to(device)
        if "UNet" in type(comps.denoiser).__name__:  # the example leaves the UNet in the default memory format
            comps.denoiser.to(memory_format=torch.contiguous_format)
        step = PLAIN[case.family](comps, preset, data, device, models.weight_dtype)
        reset_peak()
        return self.timed(step, preset.training.batch_size * preset.training.grad_accum)

    def timed(self, steps, images_per_step: int) -> dict:
        """Warm-up steps, then as many timed steps as fill ~6 s at the last warm-up step's pace (3..40); past
        the budget's deadline the fewest (a slow last case must not push the run past the session)."""
        warmup, target_s, lo, hi = (1, 0.0, 2, 2) if self.smoke else (1, 0.0, 4, 4) if self.cpu_real else \
            (2, 6.0, 3, 40)
        if time.monotonic() > self.deadline:
            warmup, target_s = 1, 0.0
        last = 0.0
        for _ in range(warmup):
            sync()
            t = time.perf_counter()
            steps(1)
            sync()
            last = time.perf_counter() - t
        n = max(lo, min(hi, round(target_s / max(last, 1e-6))))
        sync()
        t = time.perf_counter()
        steps(n)
        sync()
        s_it = (time.perf_counter() - t) / n
        return {"s_it": s_it, "img_s": images_per_step / s_it, "peak_gb": peak_gb(), "steps": n}

    # -- the environment
    def _check_bitsandbytes(self) -> str:
        """'' when adamw8bit works here; else 'adamw' (and a note for the header) so the suite still runs."""
        try:
            import bitsandbytes as bnb
            import torch

            p = torch.nn.Parameter(torch.zeros(4096, device=self.device))
            p.grad = torch.ones_like(p)
            bnb.optim.AdamW8bit([p], lr=1e-3).step()
            return ""
        except Exception as e:  # noqa: BLE001 - missing package, missing CUDA library, ...
            self.optimizer_note = (f"adamw8bit does not run here ({type(e).__name__}: {str(e)[:80]}): "
                                   f"every case uses adamw instead")
            return "adamw"

    def resident(self) -> str:
        import torch

        if self.device != "cuda":
            return ""
        return f"  (GPU memory held after it: {torch.cuda.memory_allocated() / GB:.1f} GB)"


# ------------------------------------------------------------------------------------------------- Easel's step

def easel_steps(r, n: int) -> None:
    """n more steps of engine/training/loop.py's loop (optimizer_step, the step event, control files, cadence)."""
    from engine.training.loop import loop

    r.total_steps = r.step + n
    loop(r, r.total_steps)


def forward_flops(r) -> float:
    """FLOPs of the denoiser's forward pass over one optimizer step's batches, counted on one real forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from engine.training.modes.denoiser import batch_loss

    group = r.epoch_batches()[:r.preset.training.grad_accum]
    with torch.no_grad(), r.accelerator.autocast(), FlopCounterMode(display=False) as counter:
        batch_loss(r, r.batches(group[0], r.epoch, 0))
    return float(counter.get_total_flops()) * len(group)


def storage_words(comps) -> str:
    """What the case trained on, checked on the model itself: the share of base weights in fp8, the blocks swapped,
    the share of the text encoders' weights in fp8."""
    import torch

    def fp8_share(modules) -> float:
        params = [p for m in modules if m is not None for p in m.parameters()]
        return sum(p.numel() for p in params if p.dtype == torch.float8_e4m3fn) / max(1, sum(p.numel() for p in params))

    fp8, te_fp8 = fp8_share([comps.denoiser]), fp8_share(comps.text_encoders)
    swap = comps.extra.get("block_swap")
    return ", ".join(w for w in (f"fp8 {fp8:.0%}" if fp8 else "", f"swap {len(swap.blocks)}" if swap else "",
                                 f"text encoder fp8 {te_fp8:.0%}" if te_fp8 else "") if w)


def unswap(comps) -> None:
    swap = comps.extra.get("block_swap")
    if swap is not None:
        swap.remove()
        comps.extra["block_swap"] = None


def release(models: Models | None) -> None:
    """Let go of a family's models: `models = release(models)` (their block swap first, it holds pinned RAM)."""
    if models is not None:
        unswap(models.comps)


# ------------------------------------------------------------------------------------------------- the models

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the rest: diffusers' defaults = SD1.5
SD15_TINY = dict(sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=1, cross_attention_dim=32,
                 attention_head_dim=8)
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)   # 6 size ids x 256 + bigG's pooled 1280
SDXL_TINY = dict(SDXL_UNET, sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=1,
                 attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 2), cross_attention_dim=32 + 48,
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 48)
# FluxTransformer2DModel's defaults are FLUX.1's widths, but schnell's guidance_embeds=False: dev has the guidance
# embedding (11,901,408,320 parameters, engine/models/fit/'s figure)
FLUX_TRANSFORMER = dict(guidance_embeds=True)
FLUX_TINY = dict(num_layers=2, num_single_layers=4, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
CLIP_BIG_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                  num_attention_heads=20, hidden_act="gelu", projection_dim=1280)
CLIP_TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
CLIP_BIG_G_TINY = dict(CLIP_TINY, hidden_size=48, projection_dim=48)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
T5_TINY = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
# Z-Image's Qwen3-4B (transformers' Qwen3Model: 4,022,468,096 parameters, zimage/memory.py's figure); the Qwen3-4B
# config.json widths (rope_theta and max_position_embeddings move neither memory nor FLOPs)
QWEN3_4B = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                rope_theta=1000000.0, tie_word_embeddings=True)
# FLUX.2 klein base (transformer/config.json of black-forest-labs/FLUX.2-klein-base-4B and -9B; flux2/memory.py's
# KLEIN and QWEN3, whose counts "will it fit" predicts with: 3,875,544,576 and 9,078,581,248 parameters); the rest
# is Flux2Transformer2DModel's defaults (4 x 32 rotary axes, no biases). Its text encoder is Qwen3ForCausalLM, as the
# pipeline holds it: Qwen3-4B (the head tied to the embedding) and Qwen3-8B (8,190,735,360 with its own head).
KLEIN = {"4b": dict(num_layers=5, num_single_layers=20, num_attention_heads=24, attention_head_dim=128,
                    joint_attention_dim=3 * 2560, in_channels=128, mlp_ratio=3.0, guidance_embeds=False),
         "9b": dict(num_layers=8, num_single_layers=24, num_attention_heads=32, attention_head_dim=128,
                    joint_attention_dim=3 * 4096, in_channels=128, mlp_ratio=3.0, guidance_embeds=False)}
KLEIN_QWEN3 = {"4b": QWEN3_4B,
               "9b": dict(QWEN3_4B, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)}
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
VAE_TINY = dict(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8)


def on_device(device: str, dtype, make):
    """make() with its parameters created on `device` in `dtype`: random init, no CPU copy, nothing read."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return make()
    finally:
        torch.set_default_dtype(before)


def clip(tokenizer, widths: dict, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = tokenizer.get_vocab()
    config = CLIPTextConfig(**{"vocab_size": len(ids), **widths}, max_position_embeddings=77,
                            bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|endoftext|>"],
                            pad_token_id=ids["<|endoftext|>"])   # the pooled output is read at the end token
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def autoencoder(widths: dict, **config):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, **widths, **config)


def ddpm_alphas():
    from diffusers import DDPMScheduler

    from engine.models.families.sd.record import alphas_cumprod_of

    return alphas_cumprod_of(DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           num_train_timesteps=1000))


def build_sd15(tiny: bool, device: str, dtype):
    from diffusers import UNet2DConditionModel

    from engine.models.families.base import Components
    from engine.models.tiny import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer()
    unet = on_device(device, dtype, lambda: UNet2DConditionModel(**(SD15_TINY if tiny else SD15_UNET)))
    te = on_device(device, dtype, lambda: clip(tok, CLIP_TINY if tiny else CLIP_L))
    vae = on_device(device, dtype, lambda: autoencoder(VAE_TINY if tiny else VAE, latent_channels=4,
                                                       scaling_factor=0.18215))
    return Components(pipe=None, denoiser=unet, vae=vae, text_encoders=(te,), tokenizers=(tok,),
                      prediction_type="epsilon", alphas_cumprod=ddpm_alphas(), vae_dtype=vae.dtype)


def build_sdxl(tiny: bool, device: str, dtype):
    import torch
    from diffusers import UNet2DConditionModel

    from engine.models.families.base import Components
    from engine.models.tiny import tiny_clip_tokenizer

    tok, tok_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    unet = on_device(device, dtype, lambda: UNet2DConditionModel(**(SDXL_TINY if tiny else SDXL_UNET)))
    te = on_device(device, dtype, lambda: clip(tok, CLIP_TINY if tiny else CLIP_L))
    te_2 = on_device(device, dtype, lambda: clip(tok_2, CLIP_BIG_G_TINY if tiny else CLIP_BIG_G, with_projection=True))
    # SDXL's VAE overflows in fp16, so Easel (components_from_pipe's vae_fp32) and the example both keep it in fp32
    vae = on_device(device, torch.float32, lambda: autoencoder(VAE_TINY if tiny else VAE, latent_channels=4,
                                                               scaling_factor=0.13025))
    return Components(pipe=None, denoiser=unet, vae=vae, text_encoders=(te, te_2), tokenizers=(tok, tok_2),
                      prediction_type="epsilon", alphas_cumprod=ddpm_alphas(), vae_dtype=vae.dtype)


def build_flux(tiny: bool, device: str, dtype):
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from engine.models.families.base import Components
    from engine.models.families.flux.record import T5_TOKENS
    from engine.models.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

    tok, tok_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    transformer = on_device(device, dtype, lambda: FluxTransformer2DModel(**(FLUX_TINY if tiny else FLUX_TRANSFORMER)))
    te = on_device(device, dtype, lambda: clip(tok, CLIP_TINY if tiny else CLIP_L))
    t5 = T5_TINY | {"vocab_size": len(tok_2)} if tiny else T5_XXL
    te_2 = on_device(device, dtype, lambda: T5EncoderModel(T5Config(**t5, decoder_start_token_id=0, pad_token_id=0,
                                                                    eos_token_id=1)))
    vae = on_device(device, dtype, lambda: flux_ae(VAE_TINY if tiny else VAE))
    return Components(pipe=None, denoiser=transformer, vae=vae, text_encoders=(te, te_2), tokenizers=(tok, tok_2),
                      prediction_type="flow", vae_dtype=vae.dtype,
                      extra={"variant": "dev", "guidance_scale": 1.0, "max_sequence_length": T5_TOKENS["dev"]})


def flux_ae(widths: dict):
    """FLUX.1's autoencoder (ae.safetensors, also Z-Image's): 16 latent channels, no quant convs, its shift/scale."""
    return autoencoder(widths, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                       scaling_factor=0.3611, shift_factor=0.1159)


def build_zimage(tiny: bool, device: str, dtype):
    """Z-Image's transformer (ZImageTransformer2DModel's defaults are the real model: dim 3840, 2 + 2 refiner and
    30 main blocks, 6,154,908,736 parameters), Qwen3-4B and FLUX.1's AE; tiny: zimage/tiny.py's pipeline."""
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from engine.models.families import tiny_builder
    from engine.models.families.base import Components
    from engine.models.families.zimage.record import TEXT_TOKENS
    from engine.models.families.zimage.tiny import tiny_qwen_tokenizer

    if tiny:
        pipe = on_device(device, dtype, tiny_builder("zimage"))
        transformer, te, vae, tok = pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer
    else:
        tok = tiny_qwen_tokenizer()
        transformer = on_device(device, dtype, ZImageTransformer2DModel)
        te = on_device(device, dtype, lambda: Qwen3Model(Qwen3Config(**QWEN3_4B)))
        vae = on_device(device, dtype, lambda: flux_ae(VAE))
    return Components(pipe=None, denoiser=transformer, vae=vae, text_encoders=(te,), tokenizers=(tok,),
                      prediction_type="flow", vae_dtype=vae.dtype,
                      extra={"variant": "base", "max_sequence_length": TEXT_TOKENS})


def build_flux2(tiny: bool, device: str, dtype, variant: str = "4b"):
    """FLUX.2 klein base `variant` ("4b" | "9b", the preset's model.path says which): its transformer (KLEIN),
    Qwen3-4B / Qwen3-8B as Qwen3ForCausalLM and the FLUX.2 AE (AutoencoderKLFlux2's defaults: 32 latent channels,
    84,046,372 parameters); tiny: flux2/tiny.py's pipeline (one double and one single block)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from engine.models.families import tiny_builder
    from engine.models.families.base import Components
    from engine.models.families.flux2.lora_names import size_of
    from engine.models.families.flux2.record import TEXT_TOKENS
    from engine.models.families.zimage.tiny import tiny_qwen_tokenizer

    if tiny:
        pipe = on_device(device, dtype, tiny_builder("flux2"))
        transformer, te, vae, tok = pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer
    else:
        tok = tiny_qwen_tokenizer()
        transformer = on_device(device, dtype, lambda: Flux2Transformer2DModel(**KLEIN[variant]))
        te = on_device(device, dtype, lambda: Qwen3ForCausalLM(Qwen3Config(**KLEIN_QWEN3[variant])))
        vae = on_device(device, dtype, AutoencoderKLFlux2)
    # what flux2/record.py's load puts in extra
    return Components(pipe=None, denoiser=transformer, vae=vae, text_encoders=(te,), tokenizers=(tok,),
                      prediction_type="flow", vae_dtype=vae.dtype,
                      extra={"variant": size_of(transformer) or "", "max_sequence_length": TEXT_TOKENS,
                             "distilled": False})


BUILDERS = {"sd15": build_sd15, "sdxl": build_sdxl, "flux": build_flux, "zimage": build_zimage, "flux2": build_flux2}


def flux_as_loaded(transformer, model_cfg, dtype) -> None:
    """families/flux/loading.py stores the transformer in fp8 as soon as it is read, before the LoRA."""
    from engine.models.base_storage import store_in_fp8
    from engine.models.families import capabilities

    if model_cfg.quantize_base == "fp8":
        store_in_fp8(transformer, dtype, block_lists=capabilities("flux").block_lists)
        transformer.easel_fp8 = True


def zimage_as_loaded(transformer, model_cfg, dtype) -> None:
    """zimage/loading.py's store(): fp8 as the transformer is read, before Qwen3 and the LoRA."""
    from engine.models.families.zimage.loading import store

    store(transformer, model_cfg, dtype, lambda text, n, total: None)


def flux2_as_loaded(transformer, model_cfg, dtype) -> None:
    """flux2/loading.py's store(): fp8 as the transformer is read, before Qwen3 and the LoRA."""
    from engine.models.families.flux2.loading import store

    store(transformer, model_cfg, dtype, lambda text, n, total: None)


AS_LOADED = {"flux": flux_as_loaded, "zimage": zimage_as_loaded,   # what family.load does beyond reading
             "flux2": flux2_as_loaded}


# ------------------------------------------------------------------------------------------------- the plain loops

def plain_optimizer(denoiser, preset):
    """The example's optimizer over the LoRA parameters: torch AdamW, or bitsandbytes' with --use_8bit_adam."""
    import torch

    params = [p for p in denoiser.parameters() if p.requires_grad]
    opt = preset.optimizers["unet"]
    if opt.type.startswith("adamw8bit"):
        import bitsandbytes as bnb

        return params, bnb.optim.AdamW8bit(params, lr=opt.lr)
    return params, torch.optim.AdamW(params, lr=opt.lr)


def plain_images(data: Path, res: int):
    """(next_batch(k, batch) -> (pixels [B, 3, res, res] in [-1, 1], captions)): files read and resized every step."""
    import torch

    from engine.data.layout import find_items, read_caption

    items = find_items(data)

    def load(path):
        from train_speed import load_square  # the plain loop's image handling, shared with bench/train_speed.py

        return load_square(path, res)

    def next_batch(k: int, bs: int):
        batch = [items[(k * bs + i) % len(items)] for i in range(bs)]
        return torch.stack([load(it.image) for it in batch]), [read_caption(it.caption) for it in batch]

    return next_batch


def plain_finish(loss, params, opt, clip_norm: float) -> float:
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip_norm or 1e9)
    opt.step()
    opt.zero_grad()
    return loss.item()   # the example logs the loss every step: one host sync, as in Easel's step


def plain_sd15(comps, preset, data, device, dtype):
    """diffusers' train_text_to_image_lora.py step."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    unet, vae, (te,), (tok,) = comps.denoiser, comps.vae, comps.text_encoders, comps.tokenizers
    res, bs = preset.dataset.resolution_px, preset.training.batch_size
    params, opt = plain_optimizer(unet, preset)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    next_batch, counter = plain_images(data, res), iter(range(1 << 30))

    def step(n: int) -> None:
        for _ in range(n):
            pixels, captions = next_batch(next(counter), bs)
            with torch.no_grad():
                latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
                ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(device)
                hidden = te(ids)[0]
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bs,), device=device).long()
            noisy = scheduler.add_noise(latents, noise, timesteps).to(dtype)
            with autocast(device, dtype):
                pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
            plain_finish(F.mse_loss(pred.float(), noise.float()), params, opt, preset.training.clip_grad_norm)
    return step


def plain_sdxl(comps, preset, data, device, dtype):
    """diffusers' train_text_to_image_lora_sdxl.py step (fp32 VAE, both CLIPs' penultimate states, size ids)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    unet, vae = comps.denoiser, comps.vae
    res, bs = preset.dataset.resolution_px, preset.training.batch_size
    params, opt = plain_optimizer(unet, preset)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    next_batch, counter = plain_images(data, res), iter(range(1 << 30))
    time_ids = torch.tensor([[res, res, 0, 0, res, res]] * bs, device=device, dtype=dtype)

    def step(n: int) -> None:
        for _ in range(n):
            pixels, captions = next_batch(next(counter), bs)
            with torch.no_grad():
                latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
                states = []
                for tok, te in zip(comps.tokenizers, comps.text_encoders):
                    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                              return_tensors="pt").input_ids.to(device)
                    out = te(ids, output_hidden_states=True)
                    pooled = out[0]
                    states.append(out.hidden_states[-2])
                hidden = torch.cat(states, dim=-1)
            latents = latents.to(dtype)
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bs,), device=device).long()
            noisy = scheduler.add_noise(latents, noise, timesteps)
            with autocast(device, dtype):
                pred = unet(noisy, timesteps, hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                            return_dict=False)[0]
            plain_finish(F.mse_loss(pred.float(), noise.float()), params, opt, preset.training.clip_grad_norm)
    return step


def plain_flux(comps, preset, data, device, dtype):
    """diffusers' train_dreambooth_lora_flux.py step with per-image captions (CLIP + T5 every step)."""
    import torch
    import torch.nn.functional as F
    from diffusers import FluxPipeline

    transformer, vae = comps.denoiser, comps.vae
    (clip_model, t5), (tok, tok_2) = comps.text_encoders, comps.tokenizers
    res, bs = preset.dataset.resolution_px, preset.training.batch_size
    length = comps.extra["max_sequence_length"]
    params, opt = plain_optimizer(transformer, preset)
    next_batch, counter = plain_images(data, res), iter(range(1 << 30))
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    def step(n: int) -> None:
        for _ in range(n):
            pixels, captions = next_batch(next(counter), bs)
            with torch.no_grad():
                latents = (vae.encode(pixels.to(device, vae.dtype)).latent_dist.sample() - shift) * scale
                ids = tok(captions, padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids.to(device)
                pooled = clip_model(ids, output_hidden_states=False).pooler_output
                ids_2 = tok_2(captions, padding="max_length", max_length=length, truncation=True,
                              return_tensors="pt").input_ids.to(device)
                prompt_embeds = t5(ids_2, output_hidden_states=False)[0]
            latents = latents.to(dtype)
            b, c, h, w = latents.shape
            noise = torch.randn_like(latents)
            sigmas = torch.rand(b, device=device)   # weighting_scheme "none"
            s = sigmas.view(-1, 1, 1, 1).to(dtype)
            packed = FluxPipeline._pack_latents((1 - s) * latents + s * noise, b, c, h, w)
            img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
            txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
            guidance = torch.full((b,), 3.5, device=device) if transformer.config.guidance_embeds else None
            with autocast(device, dtype):
                pred = transformer(hidden_states=packed, timestep=sigmas, guidance=guidance, pooled_projections=pooled,
                                   encoder_hidden_states=prompt_embeds, txt_ids=txt_ids, img_ids=img_ids,
                                   return_dict=False)[0]
            pred = FluxPipeline._unpack_latents(pred, h * vae_scale, w * vae_scale, vae_scale)
            plain_finish(F.mse_loss(pred.float(), (noise - latents).float()), params, opt,
                         preset.training.clip_grad_norm)
    return step


def plain_zimage(comps, preset, data, device, dtype):
    """diffusers' train_dreambooth_lora_z_image.py step with per-image captions encoded every step: the VAE's mode,
    shifted and scaled; ZImagePipeline.encode_prompt (the chat template, Qwen3's hidden_states[-2], padding dropped,
    no negative prompt: training has no use for one); the transformer on lists of [C, 1, h, w] latents at 1 - sigma,
    its output negated; the flow-matching loss against noise - latents."""
    import torch
    import torch.nn.functional as F
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    transformer, vae = comps.denoiser, comps.vae
    res, bs = preset.dataset.resolution_px, preset.training.batch_size
    length = comps.extra["max_sequence_length"]
    # the example's text-encoding pipeline: the pipeline object around the same modules, for its encode_prompt
    text_pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
                               text_encoder=comps.text_encoders[0], tokenizer=comps.tokenizers[0])
    params, opt = plain_optimizer(transformer, preset)
    next_batch, counter = plain_images(data, res), iter(range(1 << 30))
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor

    def step(n: int) -> None:
        for _ in range(n):
            pixels, captions = next_batch(next(counter), bs)
            with torch.no_grad():
                latents = (vae.encode(pixels.to(device, vae.dtype)).latent_dist.mode() - shift) * scale
                # encode_prompt rewrites the list it is given in place: a copy
                prompt_embeds, _ = text_pipe.encode_prompt(list(captions), device=device,
                                                           do_classifier_free_guidance=False,
                                                           max_sequence_length=length)
            latents = latents.to(dtype)
            noise = torch.randn_like(latents)
            sigmas = torch.rand(latents.shape[0], device=device)   # weighting_scheme "none"
            s = sigmas.view(-1, 1, 1, 1).to(dtype)
            noisy = (1 - s) * latents + s * noise
            with autocast(device, dtype):
                out = transformer(list(noisy.unsqueeze(2).unbind(0)), 1 - sigmas, prompt_embeds, return_dict=False)[0]
            pred = -torch.stack(out).squeeze(2)
            plain_finish(F.mse_loss(pred.float(), (noise - latents).float()), params, opt,
                         preset.training.clip_grad_norm)
    return step


def plain_flux2(comps, preset, data, device, dtype):
    """diffusers' train_dreambooth_lora_flux2_klein.py step with per-image captions encoded every step: the VAE's
    mode, cut into 2x2 patches and normalized by the AE's batch-norm statistics; what the pipeline's encode_prompt
    runs (Flux2KleinPipeline._get_qwen3_prompt_embeds: the chat template, the causal LM's hidden states 9, 18, 27
    stacked, all 512 positions; then _prepare_text_ids), in the compute dtype; a timestep drawn uniformly from the
    scheduler's (weighting_scheme "none"), its sigma read at the same index (the example looks it up by value, one
    host sync per sample); the transformer on the packed tokens at timestep / 1000; the output cut to the image
    tokens and unpacked by their ids; the flow-matching loss against noise - latents. The example has no fp8
    text encoder: where the preset stores Qwen3 in fp8 (model.text_encoder_fp8) the encoding runs the bare Qwen3Model
    inside the causal LM, as Easel's encode_text does (the same hidden states, no vocabulary logits; Qwen3-4B's head
    shares the fp8 embedding's weight and has no cast of its own)."""
    import torch
    import torch.nn.functional as F
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    from engine.models.families.flux2.record import LAYERS_READ

    transformer, vae = comps.denoiser, comps.vae
    res, bs = preset.dataset.resolution_px, preset.training.batch_size
    length = comps.extra["max_sequence_length"]
    # the klein base's scheduler config; with dynamic shifting its training sigmas are the unshifted 1 .. 1/1000
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    te, tok = comps.text_encoders[0], comps.tokenizers[0]
    te = te.model if preset.model.text_encoder_fp8 else te
    params, opt = plain_optimizer(transformer, preset)
    next_batch, counter = plain_images(data, res), iter(range(1 << 30))
    bn_mean = vae.bn.running_mean.view(1, -1, 1, 1).to(device)
    bn_std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(device)
    timesteps_all, sigmas_all = scheduler.timesteps.to(device), scheduler.sigmas.to(device)
    train_steps = scheduler.config.num_train_timesteps

    def step(n: int) -> None:
        for _ in range(n):
            pixels, captions = next_batch(next(counter), bs)
            with torch.no_grad():
                latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mode()
                prompt_embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(
                    te, tok, list(captions), dtype=dtype, device=device, max_sequence_length=length,
                    hidden_states_layers=LAYERS_READ)
                text_ids = Flux2KleinPipeline._prepare_text_ids(prompt_embeds).to(device)
            latents = ((Flux2KleinPipeline._patchify_latents(latents) - bn_mean) / bn_std).to(dtype)
            latent_ids = Flux2KleinPipeline._prepare_latent_ids(latents).to(device)
            noise = torch.randn_like(latents)
            index = (torch.rand(latents.shape[0]) * train_steps).long().to(device)   # weighting_scheme "none"
            timesteps, s = timesteps_all[index], sigmas_all[index].view(-1, 1, 1, 1).to(dtype)
            packed = Flux2KleinPipeline._pack_latents((1 - s) * latents + s * noise)
            with autocast(device, dtype):
                pred = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=None,
                                   encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=latent_ids,
                                   return_dict=False)[0]
            pred = Flux2KleinPipeline._unpack_latents_with_ids(pred[:, :packed.shape[1]], latent_ids)
            plain_finish(F.mse_loss(pred.float(), (noise - latents).float()), params, opt,
                         preset.training.clip_grad_norm)
    return step


PLAIN = {"sd15": plain_sd15, "sdxl": plain_sdxl, "flux": plain_flux, "zimage": plain_zimage, "flux2": plain_flux2}


def autocast(device: str, dtype):
    import torch

    return torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda")


# ------------------------------------------------------------------------------------------------- helpers

def write_dataset(folder: Path, count: int, px: int) -> Path:
    """`count` smooth random JPEGs, a quarter larger than px (so both loops resize), each with a caption."""
    import numpy as np
    from PIL import Image

    if folder.is_dir():
        return folder   # a later case at the same size reuses it (and its caches, as a user's second run does)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    side = px * 5 // 4
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        coarse.resize((side, side), Image.BICUBIC).save(folder / f"img{i:03d}.jpg", quality=90)
        (folder / f"img{i:03d}.txt").write_text(f"a photo of item {i}, studio light, detailed", encoding="utf-8")
    return folder


def predicted_peak_gb(preset) -> float | None:
    """engine.models.fit's predicted torch.cuda.max_memory_allocated for the preset; None when it has no such API."""
    try:
        from engine.models import fit

        return float(fit.estimate(fit.model_sizes(preset.model), fit.fit_settings(preset)).allocated_gb)
    except Exception:  # noqa: BLE001 - another helper is writing fit: missing or changed means "n/a"
        return None


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def collect() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def reset_peak() -> None:
    import torch

    collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GB if torch.cuda.is_available() else None


# ------------------------------------------------------------------------------------------------- the table

def print_header(suite: Suite) -> None:
    import diffusers
    import torch

    peak = f"{suite.peak_tflops:.0f} TFLOP/s dense bf16" if suite.peak_tflops else "unknown (MFU n/a)"
    print(f"Easel GPU suite  device: {suite.gpu_name}  peak: {peak}  torch {torch.__version__}  "
          f"diffusers {diffusers.__version__}", flush=True)
    if suite.smoke:
        print("CPU SMOKE: every model is tiny; the numbers only prove the script runs end to end "
              "(pred GB: the real model's, as a GPU run predicts it).", flush=True)
    elif suite.cpu_real:
        print("CPU REAL: real-size random-init models on the CPU in fp32 at batch 1 (the ratio with real "
              "VAE / text / UNet proportions); peak GB and MFU are n/a here.", flush=True)
    else:
        print("Real-size random-init models built on the GPU (T5-XXL, Qwen3-4B and Qwen3-8B real size in the plain "
              "loops); nothing downloaded.", flush=True)
    if suite.optimizer_note:
        print(f"NOTE: {suite.optimizer_note}", flush=True)


def _num(value, fmt: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, fmt)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


TABLE_HEAD = (f"{'case':<16} {'s/it':>7} {'img/s':>7} {'peak GB':>7} {'MFU':>5} {'fwd TF':>8} | "
              f"{'plain s/it':>10} {'img/s':>7} {'peak GB':>7} {'MFU':>5} | {'easel/plain':>11} | "
              f"{'tier':>4} {'fits':>4} {'pred GB':>7} | {'wall s':>6}  note")


def format_row(row: Row, suite: Suite) -> str:
    e, p, tier = row.easel, row.plain, row.case.tier_gb

    def mfu(loop: dict):
        if not (loop and suite.peak_tflops and row.fwd_flops):
            return None
        return 3 * row.fwd_flops / loop["s_it"] / (suite.peak_tflops * 1e12) * 100

    ratio = f"{e['img_s'] / p['img_s']:.2f}x" if e and p else "-"
    fits = "-"
    if tier and e.get("peak_gb") is not None:
        fits = "yes" if e["peak_gb"] + CUDA_CONTEXT_GB <= tier else "NO"
    memory = "-" if not e else "n/a"   # n/a: the CPU has no allocator peak
    note = "  ".join(w for w in (f"{e['steps']}+{p['steps']} steps" if e and p else "", row.note) if w)
    return (f"{row.case.name:<16} {_num(e.get('s_it'), '.3f', '-'):>7} {_num(e.get('img_s'), '.2f', '-'):>7} "
            f"{_num(e.get('peak_gb'), '.2f', memory):>7} {_pct(mfu(e)):>5} "
            f"{_num(row.fwd_flops / 1e12 if row.fwd_flops else None, '.3g', '-'):>8} | "
            f"{_num(p.get('s_it'), '.3f', '-'):>10} {_num(p.get('img_s'), '.2f', '-'):>7} "
            f"{_num(p.get('peak_gb'), '.2f', memory):>7} {_pct(mfu(p)):>5} | {ratio:>11} | "
            f"{tier or '-':>4} {fits:>4} {_num(row.pred_gb if tier else None, '.2f', 'n/a' if tier else '-'):>7} | "
            f"{row.wall_s:6.1f}  {note}")


def print_table(rows: list[Row], suite: Suite) -> None:
    print()
    print(TABLE_HEAD)
    print("-" * len(TABLE_HEAD))
    for row in rows:
        print(format_row(row, suite))
    skipped = [r.case.name for r in rows if r.note.startswith("skipped")]
    print(f"\ntotal {time.monotonic() - STARTED:.0f} s; skipped: {', '.join(skipped) if skipped else 'none'}")
    print("s/it, img/s: warm steps. peak GB: torch.cuda.max_memory_allocated per loop. MFU: 3 x counted forward "
          "FLOPs / s/it / the card's dense bf16 peak. fwd TF: forward TFLOP per step. fits: peak + "
          f"{CUDA_CONTEXT_GB} GB CUDA context <= tier. pred GB: engine.models.fit's predicted peak allocation. "
          "steps: Easel + plain steps timed.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
