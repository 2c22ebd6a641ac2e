"""``full``: q(z | x) = N(mu, L L^T), L a lower-triangular Cholesky factor read from the encoder (the study's stated limitation)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import MultivariateNormal

from vaelab.core.registry import POSTERIORS
from vaelab.distributions.posteriors.base import PosteriorDistribution, refuse_study_sampling, standard_normal_log_prob


class FullGaussian(PosteriorDistribution, MultivariateNormal):
    """N(mu, L L^T), L lower triangular with a positive diagonal: z = mu + L eps.

    A MultivariateNormal, so torch's KL rules (and those of ``vaelab.distributions.kl``) apply.
    """

    family = "full"

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        super().__init__(loc, scale_tril=scale_tril, validate_args=False)

    def reparameterize(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.scale_tril
        z = self.loc + (L @ eps.unsqueeze(-1)).squeeze(-1)
        # log N(z; mu, L L^T) = log N(eps; 0, I) - log |det L|, with no triangular solve
        log_det = torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
        return z, standard_normal_log_prob(eps) - log_det

    def detached(self) -> FullGaussian:
        return FullGaussian(self.loc.detach(), self.scale_tril.detach())


class FullCovarianceGaussian(nn.Module):
    """q(z|x) = N(mu, L L^T); the encoder outputs mu, log diag(L) and L's strictly lower triangle
    (row by row), d + d(d+1)/2 numbers."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def param_size(self, latent_dim: int) -> int:
        return latent_dim + latent_dim * (latent_dim + 1) // 2

    def forward(self, params: torch.Tensor) -> FullGaussian:
        d = self.latent_dim
        mu, log_diag, lower = params.split([d, d, d * (d - 1) // 2], dim=-1)
        rows, cols = torch.tril_indices(d, d, offset=-1, device=params.device)
        L = torch.diag_embed(log_diag.exp())
        L[..., rows, cols] = lower
        return FullGaussian(mu, L)


@POSTERIORS.register("full", "N(mu, L L^T), L a Cholesky factor from the encoder (d + d(d+1)/2 numbers)")
def _full(config, prior: nn.Module) -> FullCovarianceGaussian:
    refuse_study_sampling(config, "full")
    return FullCovarianceGaussian(config.latent_dim)
