"""The study's convolutional encoder and decoder (Keras' VAE example architecture).

Encoder: Conv 32 3x3 s2 ReLU -> Conv 64 3x3 s2 ReLU -> Flatten -> Dense 16 ReLU -> Dense(out).
Decoder: Dense 7*7*64 ReLU -> reshape -> ConvT 64 3x3 s2 ReLU -> ConvT 32 3x3 s2 ReLU -> ConvT(out) 3x3.
Padding reproduces Keras' "same": 28 -> 14 -> 7 and back. Any H, W divisible by 4 works.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.errors import VaelabError


def _check_divisible(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise VaelabError(f"the conv architecture needs height and width divisible by 4, got {h}x{w}")


class ConvEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        _check_divisible(image_shape)
        c, h, w = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 16),
            nn.ReLU(),
            nn.Linear(16, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        _check_divisible(image_shape)
        _, h, w = image_shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 64 * (h // 4) * (w // 4)),
            nn.ReLU(),
            nn.Unflatten(1, (64, h // 4, w // 4)),
            nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, out_channels, 3, stride=1, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
