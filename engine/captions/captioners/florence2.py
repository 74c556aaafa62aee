"""Florence-2 captions through transformers' own Florence2ForConditionalGeneration (no trust_remote_code).

Use the converted checkpoints "florence-community/Florence-2-base" / "-large". The original microsoft/Florence-2-*
repos need their remote code, which breaks with new transformers releases (FluxGym #75, #466): not supported.
"""
from __future__ import annotations

from pathlib import Path


def load(folder: Path, device: str, settings):
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    processor = AutoProcessor.from_pretrained(folder)
    model = Florence2ForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()

    @torch.inference_mode()
    def caption_batch(images: list) -> list[str]:
        if not images:
            return []
        inputs = processor(text=[settings.task] * len(images), images=images, return_tensors="pt").to(device, dtype)
        ids = model.generate(**inputs, max_new_tokens=settings.max_new_tokens, num_beams=3)
        texts = processor.batch_decode(ids, skip_special_tokens=False)
        return [processor.post_process_generation(text, task=settings.task, image_size=image.size)[settings.task]
                .strip() for text, image in zip(texts, images)]

    return caption_batch
