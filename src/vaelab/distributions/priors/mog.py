"""``mog``: a mixture of K diagonal Gaussians with learned weights, means and scales."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from vaelab.core.registry import PRIORS
from vaelab.distributions.priors.base import GaussianMixtureDistribution, PosteriorMap, Prior


class GaussianMixture(Prior):
    """p(z) = sum_k pi_k N(z; m_k, diag s_k^2): K components with learned weights, means and scales.

    The means start at K draws from N(0, I) (identical starts would stay identical), the scales at 1
    and the weights equal.
    """

    def __init__(self, latent_dim: int, components: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        components = Independent(Normal(self.means, self.log_scales.exp(), validate_args=False), 1, validate_args=False)
        weights = Categorical(logits=self.logits, validate_args=False)
        return GaussianMixtureDistribution(weights, components, validate_args=False)


@PRIORS.register("mog", "mixture of model.prior_components diagonal Gaussians, weights, means and scales learned")
def _mog(config, image_shape) -> GaussianMixture:
    return GaussianMixture(config.latent_dim, config.prior_components)
