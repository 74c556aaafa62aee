"""training.auto_batch_size: the largest batch that fits the GPU, measured once before training on the largest
bucket, and written into the run's preset.yaml so that a resume trains the same batches.
"""
from __future__ import annotations

import torch


def choose_batch_size(run_dir, preset, family, comps, batches, samples, device, weight_dtype, accelerator, events):
    """training.auto_batch_size: probe the largest batch that fits the GPU at the largest bucket, write it into the
    run's preset.yaml (so a resume trains the same batches) and return the preset with it."""
    import dataclasses

    from engine.config.save import save_preset

    if device != "cuda":
        events.emit("warning", message=f"training.auto_batch_size needs a CUDA GPU to measure; training with "
                                       f"training.batch_size {preset.training.batch_size}.")
        return preset
    largest = max(range(len(samples)), key=lambda i: samples[i].bucket[0] * samples[i].bucket[1])
    free, _ = torch.cuda.mem_get_info()
    limit = free + torch.cuda.memory_allocated()
    trained = [p for p in comps.denoiser.parameters() if p.requires_grad]
    optimizer_state = 2 * sum(p.numel() * 4 for p in trained)  # AdamW's two fp32 moments, not yet allocated

    def try_batch(n: int) -> int:
        torch.cuda.reset_peak_memory_stats()
        with accelerator.autocast():
            batch = batches([largest] * n, 0, 0)
            x = batch["latents"].to(device, weight_dtype)
            pred = family.predict(comps, x, torch.full((n,), 0.5, device=device), batch["cond"], batch["size_cond"])
        accelerator.backward(pred.float().square().mean())
        for p in trained:
            p.grad = None
        return torch.cuda.max_memory_allocated() + optimizer_state

    from engine.training.speed import largest_fitting_batch

    n, peak = largest_fitting_batch(try_batch, limit)
    if n == 0:
        raise torch.cuda.OutOfMemoryError("not even a batch of 1 fits at the largest bucket")
    training = dataclasses.replace(preset.training, batch_size=n, auto_batch_size=False)
    preset = dataclasses.replace(preset, training=training)
    save_preset(preset, run_dir / "preset.yaml")
    events.emit("status", phase="loading", text=f"Auto batch size: {n} (peak {peak / 2**30:.1f} of "
                                                f"{limit / 2**30:.1f} GB at {samples[largest].bucket[0]}x"
                                                f"{samples[largest].bucket[1]} px); written into preset.yaml",
                n=1, total=1, batch_size=n)
    return preset
