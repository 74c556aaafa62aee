"""vae: training.mode vae's section (fine-tuning the model's VAE, with a KL term and an optional discriminator)."""
from __future__ import annotations

from dataclasses import dataclass

from engine.config.schema.choices import RECONSTRUCTION_LOSSES, VAE_PARTS
from engine.config.schema.field_meta import opt


@dataclass(frozen=True)
class VaeConfig:
    """training.mode vae (FluxFlow's --train_vae / --gan_training): fine-tune the model's AutoencoderKL."""
    part: str = opt("whole", "whole: encoder and decoder; decoder: only the decoder, so the latents a trained "
                             "denoiser knows stay the same (the safe way to fix washed-out or blurry decodes).",
                    choices=VAE_PARTS)
    reconstruction_loss: str = opt("l1", "Pixel loss between an image and its reconstruction (l1 keeps edges "
                                         "sharper than mse).", choices=RECONSTRUCTION_LOSSES)
    kl_beta: float = opt(1e-4, "Weight of the KL term once warmed up (FluxFlow --kl_beta); the KL is in nats per "
                               "latent value.", min=0.0, max=100.0)
    kl_warmup_steps: int = opt(5000, "Steps over which the KL weight rises linearly from 0 to kl_beta (FluxFlow "
                                     "--kl_warmup_steps).", unit="steps", min=0, max=10_000_000)
    kl_free_bits: float = opt(0.0, "Free bits: a KL below this many nats per latent value costs nothing (FluxFlow "
                                   "--kl_free_bits).", min=0.0, max=100.0, advanced=True)
    gan: bool = opt(False, "Also train a patch discriminator and add its hinge loss (FluxFlow --gan_training): "
                           "sharper detail, slower steps.")
    lambda_adv: float = opt(0.5, "Weight of the adversarial loss (FluxFlow --lambda_adv).", min=0.0, max=100.0)
    test_images: list = opt([], "Images whose reconstructions are the samples, beside the originals (FluxFlow "
                                "--test_image_address); empty: the first validation (else training) images.")
