"""BLIP image captioning (transformers BlipForConditionalGeneration), e.g. Salesforce/blip-image-captioning-large."""
from __future__ import annotations

from pathlib import Path


def load(folder: Path, device: str, settings):
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    processor = BlipProcessor.from_pretrained(folder)
    model = BlipForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()

    @torch.inference_mode()
    def caption_batch(images: list) -> list[str]:
        if not images:
            return []
        inputs = processor(images=images, return_tensors="pt").to(device, dtype)
        ids = model.generate(**inputs, max_new_tokens=settings.max_new_tokens, num_beams=3, min_new_tokens=2)
        return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]

    return caption_batch
