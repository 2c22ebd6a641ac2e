"""The VQ-VAE's own networks: a conv encoder to a grid of code vectors, its mirror back to images, and a
causal transformer over the grid's codes (the learned prior).

Encoder (van den Oord et al. 2017's shape, smaller): Conv 32 4x4 s2 -> Conv 64 4x4 s2 -> a residual block
-> Conv 1x1 to D channels: H x W images to an H/4 x W/4 grid of D-vectors. The decoder mirrors it:
Conv 3x3 D -> 64 -> a residual block -> ConvT 32 4x4 s2 -> ConvT 4x4 s2 to the likelihood's channels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vaelab.errors import VaelabError
from vaelab.nets.conv import ChannelBiasOutput

WIDTH = 64  # channels of the grid's conv layers
RESIDUAL_HIDDEN = 32  # the residual block's bottleneck (the paper's 3x3 then 1x1 pair)


def check_divisible(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise VaelabError(f"the vqvae family's networks need height and width divisible by 4, got {h}x{w}")


class Residual(nn.Module):
    """x + Conv1x1(ReLU(Conv3x3(ReLU(x))))."""

    def __init__(self, channels: int, hidden: int = RESIDUAL_HIDDEN) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class GridEncoder(nn.Module):
    """Images B x C x H x W -> z_e(x), B x D x H/4 x W/4."""

    def __init__(self, image_shape: tuple[int, int, int], code_dim: int) -> None:
        super().__init__()
        check_divisible(image_shape)
        self.net = nn.Sequential(
            nn.Conv2d(image_shape[0], WIDTH // 2, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(WIDTH // 2, WIDTH, 4, stride=2, padding=1),
            Residual(WIDTH),
            nn.ReLU(),
            nn.Conv2d(WIDTH, code_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GridDecoder(ChannelBiasOutput, nn.Module):
    """Code vectors B x D x H/4 x W/4 -> the likelihood's parameters B x (C * params) x H x W."""

    def __init__(self, code_dim: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(code_dim, WIDTH, 3, padding=1),
            Residual(WIDTH),
            nn.ReLU(),
            nn.ConvTranspose2d(WIDTH, WIDTH // 2, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(WIDTH // 2, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class CodePrior(nn.Module):
    """p(c) = prod_i p(c_i | c_<i) over the grid's P positions in raster order, each a K-way softmax:
    a causal transformer whose input at position i is code i - 1 (a start token at 0)."""

    def __init__(self, codes: int, positions: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.codes, self.positions = codes, positions
        self.embed = nn.Embedding(codes + 1, width)  # index ``codes``: the start token
        self.position = nn.Parameter(0.02 * torch.randn(positions, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, codes)
        causal = torch.triu(torch.full((positions, positions), float("-inf")), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits B x n x K of p(c_i | c_<i) for the first n <= P positions of ``codes`` (B x n, int)."""
        n = codes.shape[1]
        start = torch.full_like(codes[:, :1], self.codes)
        h = self.embed(torch.cat([start, codes[:, :-1]], 1)) + self.position[:n]
        h = self.blocks(h, mask=self.causal[:n, :n], is_causal=True)
        return self.out(self.norm(h))

    def log_prob(self, codes: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """log p(c) per example, summed over the positions (B x P codes -> B)."""
        logits = self(codes) if logits is None else logits
        return -F.cross_entropy(logits.transpose(1, 2), codes, reduction="none").sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n x P codes drawn position by position; each step reads only the prefix drawn so far."""
        codes = torch.zeros(n, self.positions, dtype=torch.long, device=device)
        for i in range(self.positions):
            probs = F.softmax(self(codes[:, : i + 1])[:, i].float(), -1)
            codes[:, i] = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(codes.device)
        return codes
