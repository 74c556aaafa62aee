"""training.mode vae: fine-tune a model's AutoencoderKL (FluxFlow's --train_vae, with --gan_training).

    loss = reconstruction(x, x_hat) + kl_weight(step) * max(KL, free_bits) + lambda_adv * hinge_g(D(x_hat))
    D's loss = hinge_d(D(x), D(x_hat))                        (vae.gan: engine/models/discriminator.py)

x is the image in [-1, 1], x_hat the decode of a latent drawn from the encoder's posterior (the reparameterisation
trick, with the run's noise generator, so a resume draws the same), KL the posterior's divergence from N(0, 1) in nats
per latent value; kl_weight rises linearly from 0 to kl_beta over kl_warmup_steps. vae.part decoder trains the
decoder only (the encoder's latents, which a denoiser was trained on, stay the same).

The loop is engine/training/loop.py's, unchanged: this module gives the Run its setup (setup_vae) and the VAE
phase with what differs (a micro-batch's backward passes, the samples: reconstructions beside the originals, the
saved files: engine/models/vae_export.py, and the validation loss: the reconstruction of the held-out images from
the posterior mean).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from engine.failures import UserError
from engine.training.modes.phase import Phase, from_the_start, train_dataset

SAMPLE_IMAGES = 4  # reconstructions shown when vae.test_images is empty


# --------------------------------------------------------------------------------------------------- the math

def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """The KL weight of optimizer step `step` (0 = the first): beta x min(1, step / warmup_steps)."""
    return beta if warmup_steps <= 0 else beta * min(1.0, step / warmup_steps)


def kl_per_value(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """[B] KL(N(mean, exp(logvar)) || N(0, 1)), averaged over the latent values (nats per value)."""
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).mean(dim=1)


def kl_term(mean: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The batch's KL penalty with free bits: per image max(KL, free_bits), so a KL already below the allowance
    gets no gradient (Kingma et al. 2016)."""
    return kl_per_value(mean, logvar).clamp(min=free_bits).mean()


def reconstruction(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """[B] the per-image pixel loss, l1 or mse."""
    loss = (x_hat - x).abs() if kind == "l1" else (x_hat - x).square()
    return loss.flatten(1).mean(dim=1)


class VaeStep(nn.Module):
    """encode -> a latent from the posterior -> decode, as one forward: DDP syncs gradients only through a module's
    forward, and AutoencoderKL's forward does not return the posterior the KL needs."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """generator None: the posterior mean (validation, samples); else a draw from the posterior."""
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean if generator is None else posterior.sample(generator)
        return self.vae.decode(z).sample, posterior.mean, posterior.logvar


# --------------------------------------------------------------------------------------------------- set-up

def load_vae(model_cfg, family, dtype, device):
    """The VAE to train: model.vae_path's, else the vae/ of model.path's diffusers folder, else the family's loaded
    model's (a single-file checkpoint or a Hub id: the whole model is read, then all but its VAE let go)."""
    import dataclasses

    from engine.models.loading import load_vae as load_separate

    vae = load_separate(model_cfg, dtype)
    path = Path(model_cfg.path).expanduser() if model_cfg.path else None
    if vae is None and path is not None and (path / "vae" / "config.json").is_file():
        vae = load_separate(dataclasses.replace(model_cfg, vae_path=model_cfg.path), dtype)  # finds its vae/
    if vae is None:
        if not model_cfg.path:
            raise UserError("model.path: training.mode vae needs a model (or model.vae_path) whose VAE it trains.",
                            "Set model.path to your model, or model.vae_path to a VAE file or folder.")
        vae = family.load(model_cfg, dtype, "cpu").vae
    return vae.to(device, dtype)


def trainable_vae(vae, part: str) -> None:
    """requires_grad on what trains: the whole VAE, or the decoder (with post_quant_conv, which feeds it)."""
    vae.requires_grad_(part == "whole")
    if part == "decoder":
        vae.decoder.requires_grad_(True)
        if getattr(vae, "post_quant_conv", None) is not None:
            vae.post_quant_conv.requires_grad_(True)
    vae.train()


def setup_vae(run_dir: Path, preset, events, resume):
    """The Run of a VAE fine-tune: the VAE (+ a discriminator), the images as pixels, the optimizer set; on resume,
    the saved state restored."""
    from engine.data.cache import BatchSource, check_readable, reindex
    from engine.data.plan import batches_per_epoch, steps_per_epoch, total_steps
    from engine.data.samples import bucket_counts, collect_samples, split_validation
    from engine.models.discriminator import PatchDiscriminator
    from engine.models.families.base import Components
    from engine.training import checkpoints as ckpt
    from engine.training.optimizer_setup import make_accelerator, make_optimizer_set
    from engine.training.resume import restore
    from engine.training.run_state import Run, named_trainables
    from engine.training.setup import begin

    processes, device, mixed, _, family = begin(preset, events, resume)
    training, v = preset.training, preset.validation
    events.emit("status", phase="loading", text=f"Loading the VAE of {preset.model.vae_path or preset.model.path}",
                n=0, total=1)
    vae = load_vae(preset.model, family, torch.float32, device)  # trained weights in fp32; bf16 comes from autocast
    trainable_vae(vae, preset.vae.part)
    if training.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    step_module = VaeStep(vae)
    trainables = {"vae": [step_module]}
    if preset.vae.gan:
        trainables["discriminator"] = [PatchDiscriminator().to(device).train()]
    events.emit("status", phase="loading", text="VAE loaded", n=1, total=1)

    warn = lambda message: events.emit("warning", message=message)  # noqa: E731
    with processes.main_first():
        samples = collect_samples(preset.dataset, warn, captions=False)
        held = []
        if v.folder or v.fraction > 0:
            samples, held = split_validation(samples, preset.dataset, v, warn)
        every = samples + held
        every, _ = reindex(every, check_readable(every, lambda n, total: events.emit(
            "status", phase="checking", text="Checking images", n=n, total=total), warn))
    held_ids = {id(s) for s in held}
    source = BatchSource(every, preset.dataset, training.seed, encode_image=lambda pixels: pixels,
                         encode_text=lambda captions: {}, device=device)
    source.val_indices = [i for i, s in enumerate(every) if id(s) in held_ids]
    train = [s for s in every if id(s) not in held_ids]
    if not train:
        raise UserError(f"dataset.path: none of the images in {preset.dataset.path} could be read.",
                        "Check that the files are real JPEG/PNG/WebP images (open one in an image viewer).")
    comps = Components(pipe=None, denoiser=None, vae=vae, text_encoders=(), tokenizers=(), prediction_type="",
                       vae_dtype=torch.float32, extra={"vae_step": step_module})
    accelerator = make_accelerator(mixed, device, fresh=processes.world == 1)
    per_epoch = steps_per_epoch(batches_per_epoch(bucket_counts(train), training.batch_size),
                                training.grad_accum * processes.world)
    total = total_steps(training.max_steps, training.max_epochs, per_epoch)
    optim = make_optimizer_set(preset, trainables, total, accelerator)
    params = [p for modules in trainables.values() for m in modules for p in m.parameters() if p.requires_grad]
    r = Run(run_dir=run_dir, preset=preset, events=events, family=family, comps=comps, objective=None,
            trainables=trainables, params=params, optim=optim, accelerator=accelerator, batches=source,
            samples=train, noise_gen=torch.Generator(device=device).manual_seed(training.seed + processes.rank),
            total_steps=total, device=device, weight_dtype=torch.float32, processes=processes, phase=VAE,
            main_steps=total)
    r.cadence = ckpt.Cadence(preset.output)
    r.trained_names = ckpt.trainable_names(named_trainables(r))
    if training.ema.enabled:
        r.ema = ckpt.Ema(params, training.ema.decay, training.ema.update_interval)
    if source.val_indices:
        from engine.training.validation import Best

        r.best = Best(run_dir / "checkpoints" / "best", v.keep_best)
    r.status("loading", f"VAE training ({preset.vae.part}{', with a discriminator' if preset.vae.gan else ''}): "
                        f"{len(train)} image(s)" + (f", {len(held)} held out" if held else ""))
    processes.wrap(trainables, device, training.grad_accum)
    test_images(r)  # a wrong vae.test_images path fails now, not at the first samples
    if resume:
        r.resume = resume
        restore(r)
    return r


# --------------------------------------------------------------------------------------------------- the step

@contextlib.contextmanager
def frozen(module: nn.Module):
    """The discriminator as a fixed critic for the VAE's loss: no gradients land in it (with gradient
    accumulation, the critic's own gradients of earlier micro-batches stay as they are)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def vae_backward(r, load_batch, micro_batches: int) -> tuple[torch.Tensor, list]:
    """One micro-batch: the VAE's loss and backward, then (vae.gan) the discriminator's; the VAE's loss (detached)
    and the batch's files returned. The loss terms of the step are kept for its step event (r.step_extras)."""
    from engine.models.discriminator import hinge_d_loss, hinge_g_loss

    cfg = r.preset.vae
    batch = load_batch()
    x = batch["latents"].to(r.device, torch.float32)
    step_module = r.comps.extra["vae_step"]
    critic = r.trainables["discriminator"][0] if cfg.gan else None
    with r.accelerator.autocast():
        x_hat, mean, logvar = r.processes.module(step_module)(x, r.noise_gen)
        rec = (reconstruction(x_hat.float(), x, cfg.reconstruction_loss) * batch["loss_weight"].float()).mean()
        kl = kl_term(mean.float(), logvar.float(), cfg.kl_free_bits)
        loss = rec + kl_weight(r.optim.global_step, cfg.kl_beta, cfg.kl_warmup_steps) * kl
        adv = None
        if critic is not None:
            with frozen(critic):
                adv = hinge_g_loss(critic(x_hat).float())
            loss = loss + cfg.lambda_adv * adv
    r.accelerator.backward(loss / micro_batches)
    extras = {"rec_loss": rec.detach(), "kl": kl.detach()}
    if critic is not None:
        with r.accelerator.autocast():
            logits = r.processes.module(critic)(torch.cat([x, x_hat.detach()])).float()
            real, fake = logits.chunk(2)
            d_loss = hinge_d_loss(real, fake)
        r.accelerator.backward(d_loss / micro_batches)
        extras.update(adv_loss=adv.detach(), d_loss=d_loss.detach())
    r.step_extras = extras
    return loss.detach(), batch["files"]


# --------------------------------------------------------------------------------------------------- validation

@torch.no_grad()
def vae_validation_loss(r) -> float:
    """The held-out images' reconstruction loss from the posterior mean: no noise, so comparable across steps."""
    from engine.sampling.render import eval_mode

    step_module = r.comps.extra["vae_step"]
    losses, weights = [], []
    with eval_mode([step_module]), (r.ema.applied() if r.ema else contextlib.nullcontext()):
        for index in r.batches.val_indices:
            batch = r.batches([index], 0, 0, fixed=True)
            x = batch["latents"].to(r.device, torch.float32)
            with r.accelerator.autocast():
                x_hat, _, _ = step_module(x)
            losses.append(reconstruction(x_hat.float(), x, r.preset.vae.reconstruction_loss)[0])
            weights.append(batch["loss_weight"].float().sum())
    total = torch.stack(losses) @ torch.stack(weights) / torch.stack(weights).sum()
    return total.item()


# --------------------------------------------------------------------------------------------------- samples

def test_images(r) -> list[tuple[Path, tuple, tuple]]:
    """(path, size, bucket) of the images whose reconstructions are the samples: vae.test_images, else the first
    validation images, else the first training images."""
    from engine.data.buckets import bucket_of
    from engine.data.images import image_size

    if r.preset.vae.test_images:
        out = []
        for name in r.preset.vae.test_images:
            path = Path(name).expanduser()
            if not path.is_file():
                raise UserError(f"vae.test_images: no such image: {path}", "Fix the path or remove it from the list.")
            size = image_size(path)
            out.append((path, size, bucket_of(size, r.preset.dataset)))
        return out
    pool = [r.batches.samples[i] for i in r.batches.val_indices] or r.samples
    return [(s.image, s.size, s.bucket) for s in pool[:SAMPLE_IMAGES]]


@torch.no_grad()
def render_reconstructions(r, final: bool = False) -> None:
    """Each test image beside its reconstruction (original | reconstruction), one `sample` event each."""
    import time

    from PIL import Image

    from engine.data.samples import load_pixels
    from engine.sampling.render import eval_mode

    images = test_images(r)
    if not images:
        return
    r.status("sampling", f"Reconstructing {len(images)} test image(s) at step {r.step}")
    started = time.perf_counter()
    out_dir = r.run_dir / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    step_module = r.comps.extra["vae_step"]
    with eval_mode([step_module]), (r.ema.applied() if r.ema else contextlib.nullcontext()):
        for i, (path, size, bucket) in enumerate(images):
            x = load_pixels(path, size, bucket)[0][None].to(r.device)
            with r.accelerator.autocast():
                x_hat = step_module(x)[0].float().clamp(-1, 1)
            pair = torch.cat([x, x_hat], dim=-1)[0]
            pixels = ((pair + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            file = out_dir / f"step{r.step:06d}_p{i:02d}_s1.00.png"
            Image.fromarray(pixels).save(file)
            r.emit("sample", path=str(file), prompt=f"{Path(path).name}: original | reconstruction", strength=1.0,
                   step=r.step)
    r.status("sampling", f"{len(images)} reconstruction(s) in {time.perf_counter() - started:.1f} s",
             seconds=round(time.perf_counter() - started, 2))


# --------------------------------------------------------------------------------------------------- saving

def save_vae_files(r, folder: Path, stem: str) -> None:
    from engine.models.vae_export import save_vae

    r.status("saving", f"Saving {stem}")
    with (r.ema.applied() if r.ema else contextlib.nullcontext()):
        for path, fmt in save_vae(folder, stem, r.comps.vae):
            r.emit("saved", path=str(path), format=fmt, step=r.step)


VAE = Phase(name="vae", begun=from_the_start, train=train_dataset, backward=vae_backward, save=save_vae_files,
            validation_loss=vae_validation_loss, render_samples=render_reconstructions)
