"""Priors p(z): modules, so that learned priors (a mixture, the VampPrior) can own parameters.

Every prior is a :class:`Prior`: ``prior(q_z)`` is p(z) as a torch Distribution over vectors of
``latent_dim`` numbers (``q_z``, the model's map from images to q(z | x), is used by priors built
from the posterior and ignored by the others), ``prior.sample(n, generator, q_z)`` draws from a
torch.Generator, and ``prior.correlated_frame()`` tells the figures whether to lay their grids out in
a correlated Gaussian's whitened coordinates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, MultivariateNormal, Normal

from vaelab.core.registry import PRIORS
from vaelab.errors import VaelabError

STUDY_CORRELATION = 0.8  # the study does not print its Sigma; this is vaelab's documented default

PosteriorMap = Callable[[torch.Tensor], Distribution]  # images -> q(z | x), e.g. VAE.q_z


def study_covariance(latent_dim: int = 2, correlation: float = STUDY_CORRELATION) -> list[list[float]]:
    """Identity with ``correlation`` between z0 and z1: [[1, 0.8], [0.8, 1]] for d = 2."""
    cov = [[1.0 if i == j else 0.0 for j in range(latent_dim)] for i in range(latent_dim)]
    if latent_dim >= 2:
        cov[0][1] = cov[1][0] = correlation
    return cov


def _standard_normal(n: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """n x d standard normal noise from ``generator`` (on its device), moved to ``like``'s device and dtype."""
    return torch.randn((n, like.shape[-1]), generator=generator, device=generator.device).to(like)


class Prior(nn.Module):
    """The protocol every prior follows (see the module docstring)."""

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, q_z: PosteriorMap | None = None) -> torch.Tensor:
        """n draws from p(z), determined by ``generator`` alone (torch's global RNG is left as it was).

        This general form seeds a forked RNG from the generator and asks the distribution to sample;
        location-scale priors override it with their z = loc + scale * eps.
        """
        p = self(q_z)
        device = p.mean.device
        seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return p.sample((n,))

    def correlated_frame(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(loc, L) of a correlated Gaussian prior N(loc, L L^T), whose whitened coordinates u (z = loc
        + L u) the figures lay their grids out in; None for every other prior."""
        return None


class StandardNormal(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, q_z: PosteriorMap | None = None) -> torch.Tensor:
        return self.loc + _standard_normal(n, self.loc, generator) * self.scale


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
        return self.loc + _standard_normal(n, self.loc, generator) @ self.scale_tril.T

    def correlated_frame(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc, self.scale_tril


class LearnableGaussian(Prior):
    """p(z) = N(m, diag s^2) with m and log s learned (starting at N(0, I)); the KL against a diagonal
    posterior stays in closed form."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        return Independent(Normal(self.loc, self.log_scale.exp(), validate_args=False), 1, validate_args=False)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, q_z: PosteriorMap | None = None) -> torch.Tensor:
        return self.loc + _standard_normal(n, self.loc, generator) * self.log_scale.exp()


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
        return MixtureSameFamily(weights, components, validate_args=False)


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
        return MixtureSameFamily(uniform, components, validate_args=False)


@PRIORS.register("standard", "N(0, I)")
def _standard(config, image_shape) -> StandardNormal:
    return StandardNormal(config.latent_dim)


@PRIORS.register("correlated", "N(0, Sigma), Sigma = model.prior_cov (default: the study's, correlation 0.8)")
def _correlated(config, image_shape) -> CorrelatedGaussian:
    return CorrelatedGaussian(config.prior_cov or study_covariance(config.latent_dim))


@PRIORS.register("learnable", "N(m, diag s^2) with m and s learned")
def _learnable(config, image_shape) -> LearnableGaussian:
    return LearnableGaussian(config.latent_dim)


@PRIORS.register("mog", "mixture of model.prior_components diagonal Gaussians, weights, means and scales learned")
def _mog(config, image_shape) -> GaussianMixture:
    return GaussianMixture(config.latent_dim, config.prior_components)


@PRIORS.register("vamp", "VampPrior: the posterior at model.prior_components learned pseudo-inputs (Tomczak & Welling)")
def _vamp(config, image_shape) -> VampPrior:
    return VampPrior(tuple(image_shape), config.prior_components)
