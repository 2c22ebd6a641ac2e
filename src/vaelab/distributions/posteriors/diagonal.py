"""``diagonal``: q(z | x) = N(mu, diag sigma^2), the study's posterior; and the study's correlated-prior sampler."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal

from vaelab.core.registry import POSTERIORS
from vaelab.distributions.posteriors.base import PosteriorDistribution


class DiagonalNormal(PosteriorDistribution, Independent):
    """N(mu, diag sigma^2): z = mu + sigma * eps, bitwise what torch's ``rsample`` makes of eps."""

    family = "diagonal"

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    @property
    def loc(self) -> torch.Tensor:
        return self.base_dist.loc

    @property
    def scale(self) -> torch.Tensor:
        return self.base_dist.scale

    def reparameterize(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.loc + eps * self.scale
        return z, self.log_prob(z)

    def detached(self) -> DiagonalNormal:
        return DiagonalNormal(self.loc.detach(), self.scale.detach())


class StudyCholeskySample(DiagonalNormal):
    """The study's posterior sampler, kept to compare with its figures: z = mu + L eps.

    L is the *prior's* Cholesky factor, so the encoder's sigma never enters the sample, while log q
    and the KL term are still those of N(mu, diag sigma^2) (it inherits the diagonal Gaussian's KL
    rules). The pair is therefore not an ELBO of any one posterior; vaelab's default is z = mu + sigma * eps.
    """

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, scale_tril: torch.Tensor) -> None:
        super().__init__(mu, sigma)
        self.scale_tril = scale_tril

    def reparameterize(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.loc + eps @ self.scale_tril.transpose(-1, -2)
        return z, self.log_prob(z)

    def proposal(self) -> DiagonalNormal:
        """N(mu, diag sigma^2), whose density log_q is: sampling it keeps an importance-sampling
        estimate valid, which the study's z = mu + L eps would not."""
        return DiagonalNormal(self.loc, self.scale)


class DiagonalGaussian(nn.Module):
    """q(z|x) = N(mu, diag sigma^2); the encoder outputs mu and log sigma^2 (the study's choice)."""

    def param_size(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def forward(self, params: torch.Tensor) -> DiagonalNormal:
        mu, log_var = params.chunk(2, dim=-1)
        return DiagonalNormal(mu, torch.exp(0.5 * log_var))


class DiagonalGaussianStudySampling(DiagonalGaussian):
    """DiagonalGaussian whose samples follow the study's z = mu + L eps (see StudyCholeskySample)."""

    def __init__(self, prior_scale_tril: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prior_scale_tril", prior_scale_tril.clone())

    def forward(self, params: torch.Tensor) -> StudyCholeskySample:
        mu, log_var = params.chunk(2, dim=-1)
        return StudyCholeskySample(mu, torch.exp(0.5 * log_var), self.prior_scale_tril)


@POSTERIORS.register(
    "diagonal", "N(mu, diag sigma^2) from the encoder (model.prior_sampling = study: the study's sampler)"
)
def _diagonal(config, prior: nn.Module) -> nn.Module:
    if config.prior_sampling == "study":
        return DiagonalGaussianStudySampling(prior.scale_tril)
    return DiagonalGaussian()
