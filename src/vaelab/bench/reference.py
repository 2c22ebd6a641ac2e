"""The baseline the benchmark compares against: a plain, idiomatic PyTorch VAE training loop.

What a tutorial or a first project writes: a per-sample ``Dataset`` + ``DataLoader`` (shuffle,
batch 128), the networks as ``nn.Sequential``, a sigmoid on the decoder output then
``F.binary_cross_entropy``, the KL written out, ``torch.optim.Adam``, ``loss.item()`` each step.
No tuning. Same architectures and the same FLOPs as vaelab's models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class MNISTDataset(Dataset):
    def __init__(self, images_uint8: torch.Tensor):
        self.images = images_uint8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0


class ReferenceVAE(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = h.chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.decoder(z)), mu, logvar


def study_conv_pair(in_channels: int, encoder_out: int, decoder_in: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The study's conv encoder and decoder (Keras' VAE example) from its layer list; the decoder gives logits."""
    encoder = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(7 * 7 * 64, 16),
        nn.ReLU(),
        nn.Linear(16, encoder_out),
    )
    decoder = nn.Sequential(
        nn.Linear(decoder_in, 7 * 7 * 64),
        nn.ReLU(),
        nn.Unflatten(1, (64, 7, 7)),
        nn.ConvTranspose2d(64, 64, 3, 2, 1, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 3, 2, 1, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(32, 1, 3, 1, 1),
    )
    return encoder, decoder


def conv_vae(d: int = 2) -> ReferenceVAE:
    return ReferenceVAE(*study_conv_pair(1, 2 * d, d))


def mlp_vae(hidden: list[int], d: int, activation=nn.ReLU) -> ReferenceVAE:
    def stack(widths):
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(activation())
        return layers

    encoder = nn.Sequential(nn.Flatten(), *stack([784, *hidden, 2 * d]))
    decoder = nn.Sequential(*stack([d, *reversed(hidden), 784]), nn.Unflatten(1, (1, 28, 28)))
    return ReferenceVAE(encoder, decoder)


def training_step(model: ReferenceVAE, images_uint8: torch.Tensor, batch_size: int = 128) -> Callable[[], int]:
    """One step of the plain loop per call (the next batch from its DataLoader, then the update);
    returns the images it trained on. The benchmark times it as it times vaelab's own step."""
    loader = DataLoader(MNISTDataset(images_uint8), batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _forever(loader)

    def step() -> int:
        x = next(batches)
        recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = (bce + kl) / len(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        return len(x)

    return step


def _forever(loader: DataLoader):
    while True:
        yield from loader
