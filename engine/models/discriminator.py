"""The patch discriminator of VAE training with a GAN (training.mode vae, vae.gan; FluxFlow's --gan_training).

pix2pix's PatchGAN as taming-transformers and the SD VAE training use it: strided 4x4 convolutions, so every output
logit judges one patch of the image (70x70 px with 3 layers) and the critic pushes for sharp local texture, not a
global real/fake call. Neither diffusers nor another installed library ships one, so it is written here (a few
layers). BatchNorm as in pix2pix: with several GPUs it becomes SyncBatchNorm (engine/training/distributed.py).
"""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """[B, 3, H, W] in [-1, 1] -> [B, 1, H', W'] logits, one per patch."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        parts: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < layers else 1
            parts += [nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1, bias=False),
                      nn.BatchNorm2d(width * mult), nn.LeakyReLU(0.2, True)]
        parts.append(nn.Conv2d(width * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*parts)
        for m in self.modules():  # pix2pix's initialisation: N(0, 0.02) convolutions, N(1, 0.02) norms
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss: mean relu(1 - D(x)) + mean relu(1 + D(x_hat)), halved (taming's scale)."""
    return 0.5 * (torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge GAN: -mean D(x_hat)."""
    return -fake_logits.mean()
