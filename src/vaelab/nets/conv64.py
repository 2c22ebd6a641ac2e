"""The disentanglement papers' convolutional pair for 64x64 images (Higgins et al. 2017, chairs;
Burgess et al. 2018; Locatello et al. 2019, Table 1, the architecture every model of their study shares).

Encoder: Conv 32 4x4 s2 ReLU -> Conv 32 4x4 s2 ReLU -> Conv 64 4x4 s2 ReLU -> Conv 64 4x4 s2 ReLU
         -> Flatten -> Dense 256 ReLU -> Dense(out) (the posterior's parameters).
Decoder: Dense 256 ReLU -> Dense 4*4*64 ReLU -> reshape -> ConvT 64 4x4 s2 ReLU -> ConvT 32 4x4 s2 ReLU
         -> ConvT 32 4x4 s2 ReLU -> ConvT(out) 4x4 s2 (the likelihood's parameters: Bernoulli logits).

Padding 1 makes each stride-2 layer halve (or double) height and width exactly, as TensorFlow's "same"
does for these kernels: 64 -> 32 -> 16 -> 8 -> 4 and back. Any H, W divisible by 16 works; 64x64 is
the papers'. (disentanglement_lib's code has 2x2 kernels in the encoder's last two convs; the paper's
table says 4x4, which is what this is.) Glorot-uniform weights and zero biases, TensorFlow's defaults,
which those papers' code used.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.core.registry import ARCHITECTURES
from vaelab.errors import VaelabError
from vaelab.nets.conv import ChannelBiasOutput, keras_init

STRIDE_2_LAYERS = 4  # each halves the image: H and W must be multiples of 2^4
HIDDEN = 256


def _check_size(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    step = 2**STRIDE_2_LAYERS
    if h % step or w % step:
        raise VaelabError(
            f"the conv64 architecture needs height and width divisible by {step} (four stride-2 convolutions; "
            f"the papers' images are 64x64), got {h}x{w}"
        )


class Conv64Encoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        _check_size(image_shape)
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for channels_in, channels_out in zip((c, 32, 32, 64), (32, 32, 64, 64)):
            layers += [nn.Conv2d(channels_in, channels_out, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(64 * (h // 16) * (w // 16), HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, out_features),
        )
        keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv64Decoder(ChannelBiasOutput, nn.Module):
    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        _check_size(image_shape)
        _, h, w = image_shape
        layers: list[nn.Module] = []
        for channels_in, channels_out in zip((64, 64, 32), (64, 32, 32)):
            layers += [nn.ConvTranspose2d(channels_in, channels_out, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(
            nn.Linear(latent_dim, HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, 64 * (h // 16) * (w // 16)),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (64, h // 16, w // 16)),
            *layers,
            nn.ConvTranspose2d(32, out_channels, 4, stride=2, padding=1),
        )
        keras_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@ARCHITECTURES.register(
    "conv64",
    "the disentanglement papers' 64x64 conv pair (Higgins, Burgess, Locatello): convs 32-32-64-64 4x4 s2, "
    "dense 256, and mirrored",
)
def conv64_networks(config, image_shape, encoder_out: int, decoder_out: int) -> tuple[nn.Module, nn.Module]:
    return Conv64Encoder(image_shape, encoder_out), Conv64Decoder(config.latent_dim, image_shape, decoder_out)
