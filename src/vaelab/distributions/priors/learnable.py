"""``learnable``: p(z) = N(m, diag s^2), mean and scales learned with the model."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vaelab.core.registry import PRIORS
from vaelab.distributions.priors.base import PosteriorMap, Prior, standard_normal_noise


class LearnableGaussian(Prior):
    """p(z) = N(m, diag s^2) with m and log s learned (starting at N(0, I)); the KL against a diagonal
    posterior stays in closed form."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        return Independent(Normal(self.loc, self.log_scale.exp(), validate_args=False), 1, validate_args=False)

    def gaussian(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc, torch.diag(self.log_scale.exp())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, q_z: PosteriorMap | None = None) -> torch.Tensor:
        return self.loc + standard_normal_noise(n, self.loc, generator) * self.log_scale.exp()


@PRIORS.register("learnable", "N(m, diag s^2) with m and s learned")
def _learnable(config, image_shape) -> LearnableGaussian:
    return LearnableGaussian(config.latent_dim)
