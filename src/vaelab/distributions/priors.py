"""Priors p(z). Modules, so that learnable priors (mixtures, VampPrior) can own parameters."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from vaelab.core.registry import PRIORS
from vaelab.errors import VaelabError

STUDY_CORRELATION = 0.8  # the study does not print its Sigma; this is vaelab's documented default


def study_covariance(latent_dim: int = 2, correlation: float = STUDY_CORRELATION) -> list[list[float]]:
    """Identity with ``correlation`` between z0 and z1: [[1, 0.8], [0.8, 1]] for d = 2."""
    cov = [[1.0 if i == j else 0.0 for j in range(latent_dim)] for i in range(latent_dim)]
    if latent_dim >= 2:
        cov[0][1] = cov[1][0] = correlation
    return cov


class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)


class CorrelatedGaussian(nn.Module):
    """p(z) = N(0, Sigma) for a user-given covariance, checked positive definite.

    Sampling uses the Cholesky factor L (z = L eps); the KL against a diagonal posterior is the
    closed form registered in ``vaelab.distributions.kl``.
    """

    def __init__(self, covariance: torch.Tensor | list[list[float]]) -> None:
        super().__init__()
        try:
            cov = torch.as_tensor(covariance, dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise VaelabError(f"prior covariance must be a square matrix of numbers ({err})") from None
        if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
            raise VaelabError(f"prior covariance must be a square matrix, got shape {tuple(cov.shape)}")
        if not torch.isfinite(cov).all():
            raise VaelabError("prior covariance has non-finite entries")
        if not torch.allclose(cov, cov.T, atol=1e-6):
            raise VaelabError(f"prior covariance must be symmetric, got {cov.tolist()}")
        L, info = torch.linalg.cholesky_ex(cov.double())
        if info.item() != 0:
            eigenvalues = torch.linalg.eigvalsh(cov.double()).tolist()
            raise VaelabError(
                f"prior covariance {cov.tolist()} is not positive definite (eigenvalues "
                f"{[round(e, 4) for e in eigenvalues]}); every eigenvalue must be > 0, "
                "e.g. a correlation strictly between -1 and 1"
            )
        self.register_buffer("loc", torch.zeros(cov.shape[0]))
        self.register_buffer("scale_tril", L.float())

    @property
    def covariance(self) -> torch.Tensor:
        return self.scale_tril @ self.scale_tril.T

    def forward(self) -> Distribution:
        return MultivariateNormal(self.loc, scale_tril=self.scale_tril, validate_args=False)


@PRIORS.register("standard", "N(0, I)")
def _standard(config) -> StandardNormal:
    return StandardNormal(config.latent_dim)


@PRIORS.register("correlated", "N(0, Sigma), Sigma = model.prior_cov (default: the study's, correlation 0.8)")
def _correlated(config) -> CorrelatedGaussian:
    return CorrelatedGaussian(config.prior_cov or study_covariance(config.latent_dim))
