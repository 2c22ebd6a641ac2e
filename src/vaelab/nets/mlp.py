"""Fully connected encoders and decoders: a general builder, the study's dense reference
(784-512-256-d / d-256-512-784, ReLU) and Burda et al.'s (784-200-200-d, tanh) are instances."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.core.registry import ACTIVATIONS, ARCHITECTURES

for _name, _layer in {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}.items():
    ACTIVATIONS.register(_name, f"torch.nn.{_layer.__name__}")(_layer)


def _activation(name: str) -> nn.Module:
    # a ReLU straight after a Linear may overwrite its output: nothing else reads it (autograd keeps
    # the Linear's input, and the ReLU's own output), so it runs in place and allocates nothing
    return nn.ReLU(inplace=True) if name == "relu" else ACTIVATIONS.get(name)()


class BatchNorm(nn.BatchNorm1d):
    """Batch normalisation of the last dimension over all the others (samples x images too); a single
    row in training is normalised by the running statistics instead (a last batch or a data-parallel
    shard of one image has no batch variance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.training and len(rows) < 2:
            out = F.batch_norm(rows, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        else:
            out = super().forward(rows)
        return out.view(x.shape)


def mlp(widths: list[int], activation: str = "relu", batch_norm: bool = False) -> nn.Sequential:
    """Linear layers through ``widths`` with ``activation`` between them (none after the last);
    ``batch_norm`` puts a :class:`BatchNorm` between each hidden Linear and its activation (Sønderby et al.)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            if batch_norm:
                layers.append(BatchNorm(b))
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        hidden: list[int],
        out_features: int,
        activation: str,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        widths = [math.prod(image_shape), *hidden, out_features]
        self.net = nn.Sequential(nn.Flatten(), mlp(widths, activation, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """Mirror of the encoder: z -> reversed hidden widths -> an image of ``out_channels`` maps."""

    def __init__(
        self,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        hidden: list[int],
        out_channels: int,
        activation: str,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        _, h, w = image_shape
        self.net = nn.Sequential(
            mlp([latent_dim, *reversed(hidden), out_channels * h * w], activation, batch_norm),
            nn.Unflatten(1, (out_channels, h, w)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    @torch.no_grad()
    def set_output_bias(self, mean_image: torch.Tensor, output_for_mean) -> None:
        """Set the last layer's bias, pixel by pixel, to ``output_for_mean(mean_image)`` (C x H x W)."""
        last = self.net[0][-1]
        last.bias.copy_(output_for_mean(mean_image).reshape(last.bias.shape))


@ARCHITECTURES.register("dense", "the study's dense pair, 784-512-256-d and back, ReLU")
def dense_networks(config, image_shape, encoder_out: int, decoder_out: int) -> tuple[nn.Module, nn.Module]:
    return (
        MLPEncoder(image_shape, [512, 256], encoder_out, "relu"),
        MLPDecoder(config.latent_dim, image_shape, [512, 256], decoder_out, "relu"),
    )


@ARCHITECTURES.register(
    "mlp",
    "fully connected, model.hidden widths and model.activation (Burda et al.: [200, 200], tanh), "
    "model.batch_norm in the hidden layers",
)
def mlp_networks(config, image_shape, encoder_out: int, decoder_out: int) -> tuple[nn.Module, nn.Module]:
    hidden, activation, batch_norm = list(config.hidden), config.activation, config.batch_norm
    return (
        MLPEncoder(image_shape, hidden, encoder_out, activation, batch_norm),
        MLPDecoder(config.latent_dim, image_shape, hidden, decoder_out, activation, batch_norm),
    )


@ARCHITECTURES.register(
    "mlp-tcvae",
    "Chen et al.'s dSprites pair (beta-TCVAE code): 1200-1200 ReLU up, 1200-1200-1200 tanh down; PyTorch's init",
)
def tcvae_mlp_networks(config, image_shape, encoder_out: int, decoder_out: int) -> tuple[nn.Module, nn.Module]:
    return (
        MLPEncoder(image_shape, [1200, 1200], encoder_out, "relu"),
        MLPDecoder(config.latent_dim, image_shape, [1200, 1200, 1200], decoder_out, "tanh"),
    )
