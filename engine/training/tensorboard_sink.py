"""TensorBoard logs beside the events (runs/<run>/tensorboard/): the events stay the source of truth, and this sink
turns each one into TensorBoard's form as it is written: train_loss and the LR per component from `step`, val_loss
and val_loss_best from `val`, the sample images from `sample`. It switches itself on from the `started` event's
preset (output.tensorboard), so nothing else in the engine knows TensorBoard exists.
`python -m engine tensorboard [RUNS]` (engine/tensorboard_view.py) shows them.
"""
from __future__ import annotations

from pathlib import Path


# a step event's own fields; the others are a mode's loss terms, plotted under step/
STEP_FIELDS = {"kind", "t", "time", "step", "total_steps", "epoch", "loss", "lr", "s_per_it", "eta_s", "vram_gb"}
MAX_PROMPT_PLOTS = 32  # per-prompt reward curves beyond this many prompts would bury the others


class TensorBoardSink:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.writer = None

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "started":
            if event.get("preset", {}).get("output", {}).get("tensorboard", False) and self.writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.folder))
            return
        if self.writer is None:
            return
        if kind == "step":
            self.writer.add_scalar("train_loss", event["loss"], event["step"])
            for component, lr in event["lr"].items():
                self.writer.add_scalar(f"lr/{component}", lr, event["step"])
            for name, value in event.items():  # a mode's own terms: the VAE's KL, RL's reward, KL, clip fraction
                if name not in STEP_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"step/{name}", value, event["step"])
        elif kind == "rl":
            for name in ("reward_mean", "reward_std", "reward_min", "reward_max", "adv_mean", "adv_std"):
                self.writer.add_scalar(f"rl/{name}", event[name], event["step"])
            for name, value in event["rewards"].items():
                self.writer.add_scalar(f"rl/reward/{name}", value, event["step"])
            for n, (prompt, figures) in enumerate(event["per_prompt"].items()):
                if n < MAX_PROMPT_PLOTS:
                    self.writer.add_scalar(f"rl/per_prompt/{prompt[:60]}", figures["mean"], event["step"])
        elif kind == "val":
            self.writer.add_scalar("val_loss", event["val_loss"], event["step"])
            self.writer.add_scalar("val_loss_best", event["best"], event["step"])
        elif kind == "reflow":
            self.writer.add_scalar("reflow/straightness", event["straightness"], event["iteration"])
        elif kind == "sample":
            self._image(event)
        elif kind in ("done", "stopped", "error"):
            self.writer.flush()

    def _image(self, event: dict) -> None:
        import numpy as np
        from PIL import Image

        try:
            with Image.open(event["path"]) as image:
                pixels = np.asarray(image.convert("RGB"))
        except OSError:
            return  # a sample file that cannot be read is only missing from TensorBoard
        tag = f"samples/{Path(event['path']).stem.split('_', 1)[-1]} {event['prompt'][:48]}"  # p00_s1.00 and the prompt
        if "reward" in event:
            self.writer.add_scalar(f"samples_reward/{event['prompt'][:48]} x{event['strength']:g}", event["reward"],
                                   event["step"])
        self.writer.add_image(tag, pixels, event["step"], dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
