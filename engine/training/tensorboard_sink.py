"""TensorBoard logs beside the events (runs/<run>/tensorboard/): the events stay the source of truth, and this sink
turns each one into TensorBoard's form as it is written: train_loss and the LR per component from `step`, val_loss
and val_loss_best from `val`, the sample images from `sample`. It switches itself on from the `started` event's
preset (output.tensorboard), so nothing else in the engine knows TensorBoard exists.
`python -m engine tensorboard [RUNS]` (engine/tensorboard_view.py) shows them.
"""
from __future__ import annotations

from pathlib import Path


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
        self.writer.add_image(tag, pixels, event["step"], dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
