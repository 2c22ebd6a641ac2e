"""The study's convolutional encoder and decoder (Keras' VAE example architecture).

Encoder: Conv 32 3x3 s2 ReLU -> Conv 64 3x3 s2 ReLU -> Flatten -> Dense 16 ReLU -> Dense(out).
Decoder: Dense 7*7*64 ReLU -> reshape -> ConvT 64 3x3 s2 ReLU -> ConvT 32 3x3 s2 ReLU -> ConvT(out) 3x3.
Any H, W divisible by 4 works: 28 -> 14 -> 7 and back.

Two registered variants differ only in where the strided layers pad. ``conv`` pads both sides
(torch's ``padding=1``); ``conv-keras`` pads as TensorFlow's "same" does, only after the image
(bottom and right; the transposed convs keep the top-left 2H of their 2H + 1 outputs), and sets the
last dense layer as Keras' two Dense(d) heads (z_mean, z_log_var), each Glorot-uniform on its own.
The two are the same network mirrored: ``conv`` on an image turned 180 degrees computes what
``conv-keras`` computes on the image, with the kernels flipped. On MNIST, whose digits are centred
on the 28 x 28 grid, that moves the digit one pixel against the stride-4 grid of the code, so the
two are different models of the same data; ``conv-keras`` is Keras' own (keras-example uses it).

Plain torch layers; ``vaelab.nets.accel`` applies this CPU's speed choices (layout, fused kernels)
from outside. The ReLUs run in place: each follows its layer (in ``conv-keras`` through a view that
drops a row and a column), whose output nothing else reads (autograd saves those layers' inputs, not
their outputs), so no extra activation is allocated.

Weights are initialised as Keras does (Glorot-uniform weights, zero biases), not with PyTorch's
defaults: with PyTorch's smaller default init the 16-unit ReLU bottleneck tends to go dead early and
the 2-D model collapses to the prior (KL ~0, loss ~206 nats) in our runs; with Keras' init it trains
as in the study.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.core.registry import ARCHITECTURES
from vaelab.errors import VaelabError


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv, transposed conv and dense layer."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def _check_divisible(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise VaelabError(
            f"the conv architectures (conv, conv-keras) need height and width divisible by 4, got {h}x{w}"
        )


def keras_heads_init(layer: nn.Linear, heads: int) -> None:
    """``layer`` initialised as Keras' ``heads`` separate Dense layers side by side (each its own Glorot range)."""
    for rows in layer.weight.detach().chunk(heads, dim=0):
        nn.init.xavier_uniform_(rows)


def _strided_conv(c_in: int, c_out: int, keras_padding: bool) -> list[nn.Module]:
    """A 3x3 stride-2 conv halving H and W: padded on both sides, or as TF's "same" (bottom and right only)."""
    if keras_padding:
        return [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c_in, c_out, 3, stride=2)]
    return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)]


class DropLastRowAndColumn(nn.Module):
    """The top-left (H - 1) x (W - 1) of a map: a TF "same" transposed conv's output from torch's full one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :-1, :-1]


def _strided_conv_transpose(c_in: int, c_out: int, keras_padding: bool) -> list[nn.Module]:
    """A 3x3 stride-2 transposed conv doubling H and W, aligned as its ``_strided_conv`` counterpart."""
    if keras_padding:
        return [nn.ConvTranspose2d(c_in, c_out, 3, stride=2), DropLastRowAndColumn()]
    return [nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)]


class ConvEncoder(nn.Module):
    def __init__(
        self, image_shape: tuple[int, int, int], out_features: int, keras_padding: bool = False, heads: int = 1
    ) -> None:
        super().__init__()
        _check_divisible(image_shape)
        c, h, w = image_shape
        self.net = nn.Sequential(
            *_strided_conv(c, 32, keras_padding),
            nn.ReLU(inplace=True),
            *_strided_conv(32, 64, keras_padding),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 16),
            nn.ReLU(inplace=True),
            nn.Linear(16, out_features),
        )
        keras_init(self)
        keras_heads_init(self.net[-1], heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ChannelBiasOutput:
    """For a decoder whose last layer (``self.net[-1]``) is a convolution: one output bias per channel."""

    @torch.no_grad()
    def set_output_bias(self, mean_image: torch.Tensor, output_for_mean) -> None:
        """Set the last layer's bias to ``output_for_mean`` of each channel's mean over pixels (the
        layer has one bias per channel, so it can match the channel's mean intensity, no more)."""
        last = self.net[-1]
        last.bias.copy_(output_for_mean(mean_image.reshape(mean_image.shape[0], -1).mean(1)).reshape(last.bias.shape))


class ConvDecoder(ChannelBiasOutput, nn.Module):
    def __init__(
        self, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int, keras_padding: bool = False
    ) -> None:
        super().__init__()
        _check_divisible(image_shape)
        _, h, w = image_shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 64 * (h // 4) * (w // 4)),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (64, h // 4, w // 4)),
            *_strided_conv_transpose(64, 64, keras_padding),
            nn.ReLU(inplace=True),
            *_strided_conv_transpose(64, 32, keras_padding),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, out_channels, 3, stride=1, padding=1),
        )
        keras_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@ARCHITECTURES.register("conv", "the study's conv pair (Keras' VAE example): 2 strided convs, dense 16, and back")
def conv_networks(config, image_shape, encoder_out: int, decoder_out: int) -> tuple[nn.Module, nn.Module]:
    return ConvEncoder(image_shape, encoder_out), ConvDecoder(config.latent_dim, image_shape, decoder_out)


@ARCHITECTURES.register(
    "conv-keras", "the conv pair padded as TensorFlow pads (Keras' example exactly; conv mirrored), z heads as Keras'"
)
def conv_keras_networks(config, image_shape, encoder_out: int, decoder_out: int) -> tuple[nn.Module, nn.Module]:
    # Keras' z_mean and z_log_var are two Dense(d) layers: so the head's two halves when it is mean + log-variance
    heads = 2 if encoder_out == 2 * config.latent_dim else 1
    return (
        ConvEncoder(image_shape, encoder_out, keras_padding=True, heads=heads),
        ConvDecoder(config.latent_dim, image_shape, decoder_out, keras_padding=True),
    )
