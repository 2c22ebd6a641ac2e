"""The study's convolutional encoder and decoder (Keras' VAE example architecture).

Encoder: Conv 32 3x3 s2 ReLU -> Conv 64 3x3 s2 ReLU -> Flatten -> Dense 16 ReLU -> Dense(out).
Decoder: Dense 7*7*64 ReLU -> reshape -> ConvT 64 3x3 s2 ReLU -> ConvT 32 3x3 s2 ReLU -> ConvT(out) 3x3.
Padding reproduces Keras' "same": 28 -> 14 -> 7 and back. Any H, W divisible by 4 works.

Every ReLU runs in place: each directly follows a conv / dense layer, whose output nothing else
reads (autograd saves those layers' inputs, not their outputs), so no extra activation tensor is
allocated, in training and in inference alike.

Weights are initialised as Keras does (Glorot-uniform weights, zero biases), not with PyTorch's
defaults: with PyTorch's smaller default init the 16-unit ReLU bottleneck tends to go dead early and
the 2-D model collapses to the prior (KL ~0, loss ~206 nats) in our runs; with Keras' init it trains
as in the study.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.errors import VaelabError


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC layout: on CPU it sends convolutions, and above all the transposed ones, through oneDNN's
    fast kernels (about 2x faster forward + backward for this network, measured with `vaelab bench`)."""
    return x.contiguous(memory_format=torch.channels_last)


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv, transposed conv and dense layer."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def _check_divisible(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise VaelabError(f"the conv architecture needs height and width divisible by 4, got {h}x{w}")


def _add_bias_(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # in the output's dtype (bf16 under autocast), as oneDNN would add it
    return out if bias is None else out.add_(bias.to(out.dtype).view(1, -1, 1, 1))


class Conv2d(nn.Conv2d):
    """nn.Conv2d with the bias added apart from oneDNN's convolution (same parameters, same result).

    oneDNN computes the bias gradient inside its weight-gradient pass, slowly: the backward pass of the
    study's convolutions takes up to 40% longer with it in bf16 and up to 15% in fp32 (measured
    here), while summing the output gradient over batch and pixels costs ~0.1 ms. The add runs in
    place on the fresh convolution output, which nothing else reads.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.weight, None)
        return _add_bias_(out, self.bias)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d with the bias added apart, as :class:`Conv2d`."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        out = F.conv_transpose2d(
            x, self.weight, None, self.stride, self.padding, output_padding, self.groups, self.dilation
        )
        return _add_bias_(out, self.bias)


class UnflattenChannelsLast(nn.Unflatten):
    """Unflatten into an NCHW shape with NHWC memory. A subclass, not an extra module, so the
    parameter names (the safetensors keys of saved models) stay those of the plain network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last(super().forward(x))


class ConvEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        _check_divisible(image_shape)
        c, h, w = image_shape
        self.net = nn.Sequential(
            Conv2d(c, 32, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 16),
            nn.ReLU(inplace=True),
            nn.Linear(16, out_features),
        )
        keras_init(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(channels_last(x))


class ConvDecoder(nn.Module):
    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        _check_divisible(image_shape)
        _, h, w = image_shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 64 * (h // 4) * (w // 4)),
            nn.ReLU(inplace=True),
            UnflattenChannelsLast(1, (64, h // 4, w // 4)),
            ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
            ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
            ConvTranspose2d(32, out_channels, 3, stride=1, padding=1),
        )
        keras_init(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    @torch.no_grad()
    def set_output_bias(self, mean_image: torch.Tensor, output_for_mean) -> None:
        """Set the last layer's bias to ``output_for_mean`` of each channel's mean over pixels (the
        layer has one bias per channel, so it can match the channel's mean intensity, no more)."""
        last = self.net[-1]
        last.bias.copy_(output_for_mean(mean_image.reshape(last.bias.shape[0], -1).mean(1)))
