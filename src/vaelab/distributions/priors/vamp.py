"""``vamp``: the VampPrior (Tomczak & Welling 2018), the posterior's mixture at K learned pseudo-inputs."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution

from vaelab.core.registry import PRIORS
from vaelab.distributions.priors.base import GaussianMixtureDistribution, PosteriorMap, Prior


class VampPrior(Prior):
    """p(z) = 1/K sum_k q(z | u_k), the posterior at K learned pseudo-inputs u_k (Tomczak & Welling 2018).

    The pseudo-inputs are images, u = sigmoid(w), so they stay in the data's range (0, 1) with a
    gradient everywhere; w starts as logistic noise, which makes every starting pixel uniform on (0, 1).
    (Tomczak & Welling's code starts them at random training images, or at N(-0.05, 0.01) clipped to
    [0, 1].) The posterior family must give a distribution that can be a mixture component, with a
    batch of K: a Gaussian does.
    """

    def __init__(self, image_shape: tuple[int, int, int], components: int) -> None:
        super().__init__()
        uniform = torch.rand(components, *image_shape).clamp(1e-6, 1 - 1e-6)
        self.pseudo_logits = nn.Parameter(torch.logit(uniform))

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.pseudo_logits)

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        if q_z is None:
            raise TypeError("the VampPrior is built from the posterior: call it with the model's q_z")
        components = q_z(self.pseudo_inputs)
        uniform = Categorical(logits=self.pseudo_logits.new_zeros(len(self.pseudo_logits)), validate_args=False)
        return GaussianMixtureDistribution(uniform, components, validate_args=False)


@PRIORS.register("vamp", "VampPrior: the posterior at model.prior_components learned pseudo-inputs (Tomczak & Welling)")
def _vamp(config, image_shape) -> VampPrior:
    return VampPrior(tuple(image_shape), config.prior_components)
