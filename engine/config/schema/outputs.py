"""sampling and output: the samples rendered during a run, and the run folder's files (formats, checkpoints, logs)."""
from __future__ import annotations

from dataclasses import dataclass

from engine.config.schema.choices import EXPORT_FORMATS, PRECISIONS
from engine.config.schema.field_meta import opt


@dataclass(frozen=True)
class SamplingConfig:
    prompts: list = opt([], "Prompts rendered during training (use your trigger token).")
    eval_prompts_file: str = opt("", "A text file of evaluation prompts (one per line, # for comments), rendered "
                                     "once after the last step at every strength; relative paths are from the Easel "
                                     "folder (presets/flux-eval-prompts.txt is the FLUX identity guide's).",
                                 advanced=True)
    negative_prompt: str = opt("", "Negative prompt for every sample.", advanced=True)
    every_n_steps: int = opt(0, "Render samples every N steps (0 = only at the end).", unit="steps", min=0,
                             max=10_000_000)
    at_start: bool = opt(False, "Also render samples before training (the base model, for comparison).",
                         advanced=True)
    steps: int = opt(25, "Denoising steps per sample.", min=1, max=500)
    guidance_scale: float = opt(7.0, "Classifier-free guidance (FLUX dev: distilled guidance, ~3.5).", min=0.0,
                                max=50.0)
    seed: int = opt(42, "Seed for samples (the same seed makes samples comparable across steps).", min=0,
                    max=2**32 - 1)
    width_px: int = opt(0, "Sample width (0 = training resolution).", unit="px", min=0, max=4096, advanced=True)
    height_px: int = opt(0, "Sample height (0 = training resolution).", unit="px", min=0, max=4096, advanced=True)
    strengths: list = opt([1.0], "LoRA strengths to render each prompt at, e.g. 0.5 0.8 1.0 1.2.")
    sampler: str = opt("default", "Sampler; default uses the model's own scheduler. Flow models from scratch: euler, "
                                  "midpoint, rk4 (fixed steps) or dopri5 (adaptive, atol/rtol); DDPM ones: ddim "
                                  "(ddim_eta) or ddpm.",
                       choices=("default", "euler", "ddim", "dpmpp_2m", "flow_euler", "midpoint", "rk4", "dopri5",
                                "ddpm"), advanced=True)
    ddim_eta: float = opt(0.0, "DDIM: 0 is deterministic, 1 is DDPM-like.", min=0.0, max=1.0, advanced=True)
    atol: float = opt(1e-5, "dopri5: absolute tolerance.", min=0.0, max=1.0, advanced=True)
    rtol: float = opt(1e-5, "dopri5: relative tolerance.", min=0.0, max=1.0, advanced=True)


@dataclass(frozen=True)
class OutputConfig:
    dir: str = opt("runs", "Folder that holds the run folders (relative to the Easel folder).", env="OUT_DIR")
    run_name: str = opt("lora", "Name of the run; the run folder is <name>-<date>-<time>.", env="RUN_NAME")
    formats: list = opt(["kohya"], "LoRA file formats. kohya: A1111/Forge, ComfyUI and sd-scripts load it. diffusers: "
                        "for diffusers / Python scripts (for SD 1.5, SD 2 and SDXL, A1111/Forge and ComfyUI do not "
                        "load it; FLUX LoRAs use it).", choices=EXPORT_FORMATS,
                        choice_labels={"kohya": "kohya (A1111 / Forge / ComfyUI)",
                                       "diffusers": "diffusers (for diffusers / Python)"})
    save_every_n_steps: int = opt(0, "Save a checkpoint every N steps (0 = off).", unit="steps", min=0,
                                  max=10_000_000)
    save_every_n_minutes: float = opt(0.0, "Save a checkpoint every N minutes of training (0 = off).",
                                      unit="min", min=0.0, max=100_000.0)
    save_every_n_epochs: int = opt(0, "Save a checkpoint every N epochs (0 = off).", unit="epochs", min=0,
                                   max=100_000)
    keep_last: int = opt(3, "Keep only the newest N checkpoints (0 = keep all). The final file is always kept.",
                         min=0, max=10_000, advanced=True)
    save_precision: str = opt("fp16", "Precision of the saved LoRA tensors.", choices=PRECISIONS, advanced=True)
    log_every_n_steps: int = opt(1, "A step line in engine.log (the console) every N steps (FluxFlow's "
                                    "--log_interval, EveryDream2's log_step); events, the GUI and TensorBoard still "
                                    "get every step.", unit="steps", min=1, max=1_000_000, advanced=True)
    tensorboard: bool = opt(True, "Also write TensorBoard logs into the run folder (runs/<run>/tensorboard/; "
                                  "python -m engine tensorboard shows them).", advanced=True)
