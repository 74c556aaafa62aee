"""WD14-style anime/booru taggers (SmilingWolf/wd-*-tagger-v3) run with onnxruntime: tags, not sentences.

The folder holds model.onnx and selected_tags.csv (tag_id,name,category,count; category 9 = rating, 0 = general,
4 = character). onnxruntime is optional (`pip install onnxruntime`, ~15 MB, no torch); timm would need torchvision.
"""
from __future__ import annotations

import csv
from pathlib import Path

RATING, GENERAL, CHARACTER = 9, 0, 4


def read_tags(folder: Path) -> list[tuple[str, int]]:
    """(name, category) per model output, with underscores as spaces (kaomoji like ^_^ kept)."""
    with open(Path(folder) / "selected_tags.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["name"] if len(r["name"]) <= 3 else r["name"].replace("_", " "), int(r["category"])) for r in rows]


def to_input(image, size: int):
    """The tagger's input: padded square on white, resized, BGR float32 0–255, shape (size, size, 3)."""
    import numpy as np
    from PIL import Image

    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    pixels = np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return pixels[:, :, ::-1]


def tags_from_scores(scores, tags: list[tuple[str, int]], threshold: float) -> str:
    """Character then general tags above `threshold`, most confident first, comma-separated (ratings dropped)."""
    chosen = [(score, name, category) for score, (name, category) in zip(scores, tags)
              if category in (GENERAL, CHARACTER) and score >= threshold]
    chosen.sort(key=lambda c: (c[2] != CHARACTER, -c[0]))
    return ", ".join(name for _, name, _ in chosen)


def load(folder: Path, device: str, settings):
    try:
        import onnxruntime
    except ImportError:
        from engine.failures import CaptionerUnavailable
        raise CaptionerUnavailable("The WD14 tagger needs the onnxruntime package, which is not installed.",
                                   "Install it into Easel's environment: pip install onnxruntime "
                                   "(or onnxruntime-gpu / onnxruntime-directml for a GPU).") from None
    import numpy as np

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else \
        ["CPUExecutionProvider"]
    available = set(onnxruntime.get_available_providers())
    session = onnxruntime.InferenceSession(str(Path(folder) / "model.onnx"),
                                           providers=[p for p in providers if p in available])
    model_input = session.get_inputs()[0]
    size = int(model_input.shape[1]) if isinstance(model_input.shape[1], int) else 448
    tags = read_tags(folder)

    def caption_batch(images: list) -> list[str]:
        if not images:
            return []
        batch = np.stack([to_input(image, size) for image in images])
        scores = session.run(None, {model_input.name: batch})[0]
        return [tags_from_scores(row, tags, settings.threshold) for row in scores]

    return caption_batch
