"""``standard``: p(z) = N(0, I)."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Independent, Normal

from vaelab.core.registry import PRIORS
from vaelab.distributions.priors.base import PosteriorMap, Prior, standard_normal_noise


class StandardNormal(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)

    def gaussian(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc, torch.diag(self.scale)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, q_z: PosteriorMap | None = None) -> torch.Tensor:
        return self.loc + standard_normal_noise(n, self.loc, generator) * self.scale


@PRIORS.register("standard", "N(0, I)")
def _standard(config, image_shape) -> StandardNormal:
    return StandardNormal(config.latent_dim)
