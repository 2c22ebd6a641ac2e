"""``correlated``: p(z) = N(0, Sigma), the study's correlated prior (and the whitening its figures use)."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, MultivariateNormal

from vaelab.core.registry import PRIORS
from vaelab.distributions.priors.base import PosteriorMap, Prior, standard_normal_noise
from vaelab.errors import VaelabError

STUDY_CORRELATION = 0.8  # the study does not print its Sigma; this is vaelab's documented default


def study_covariance(latent_dim: int = 2, correlation: float = STUDY_CORRELATION) -> list[list[float]]:
    """Identity with ``correlation`` between z0 and z1: [[1, 0.8], [0.8, 1]] for d = 2."""
    cov = [[1.0 if i == j else 0.0 for j in range(latent_dim)] for i in range(latent_dim)]
    if latent_dim >= 2:
        cov[0][1] = cov[1][0] = correlation
    return cov


class CorrelatedGaussian(Prior):
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

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        return MultivariateNormal(self.loc, scale_tril=self.scale_tril, validate_args=False)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, q_z: PosteriorMap | None = None) -> torch.Tensor:
        return self.loc + standard_normal_noise(n, self.loc, generator) @ self.scale_tril.T

    def gaussian(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc, self.scale_tril

    def correlated_frame(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc, self.scale_tril


@PRIORS.register("correlated", "N(0, Sigma), Sigma = model.prior_cov (default: the study's, correlation 0.8)")
def _correlated(config, image_shape) -> CorrelatedGaussian:
    return CorrelatedGaussian(config.prior_cov or study_covariance(config.latent_dim))
