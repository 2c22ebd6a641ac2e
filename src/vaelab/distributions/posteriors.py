"""Posterior families q(z | x): map the encoder's output vector to a distribution over z.

Every distribution a family returns is a :class:`PosteriorDistribution`, which owns its sampling:

* ``reparameterize(eps) -> (z, log_q)``: the sample made from standard normal noise ``eps``
  (sample_shape + batch_shape + (d,)) and log q(z | x) at it (sample_shape + batch_shape);
* ``rsample_and_log_prob(sample_shape)``: the same with the noise drawn from torch's global RNG,
  exactly as torch's ``Normal.rsample`` draws it (``rsample`` returns its z);
* ``proposal()``: the distribution to importance-sample from (itself, but for the study's sampler);
* ``detached()``: the same distribution cut from the graph (the doubly reparameterised IWAE gradient
  takes ``detached().log_prob(z)``), or a VaelabError for a family that cannot give one;
* ``log_prob(z)`` where a closed form exists, ``mean`` (what ``encode`` returns), ``latent_dim``.

The families: ``diagonal`` (N(mu, diag sigma^2), the study's; its ``study`` sampling mode), ``full``
(N(mu, L L^T) through a Cholesky factor) and ``iaf`` (a diagonal Gaussian pushed through an inverse
autoregressive flow).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, constraints

from vaelab.core.registry import POSTERIORS
from vaelab.distributions.flows import iaf_steps
from vaelab.errors import VaelabError


def standard_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    """log N(eps; 0, I), summed over the last dimension."""
    return -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(-1)


class PosteriorDistribution:
    """The protocol of a posterior (see the module docstring), mixed into a torch Distribution.

    A subclass defines ``reparameterize`` and has ``loc``, its base Gaussian's location (batch_shape
    + (d,)), whose dtype and device the noise takes.
    """

    family = ""  # the registered name, for messages
    loc: torch.Tensor
    batch_shape: torch.Size

    @property
    def latent_dim(self) -> int:
        return self.loc.shape[-1]

    def reparameterize(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def standard_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Noise of shape sample_shape + (d,) from the global RNG, drawn as torch's Normal.rsample draws it."""
        shape = torch.Size(sample_shape) + (self.latent_dim,)
        return torch.empty(shape, dtype=self.loc.dtype, device=self.loc.device).normal_()

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reparameterize(self.standard_noise(torch.Size(sample_shape) + self.batch_shape))

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def proposal(self) -> PosteriorDistribution:
        """The distribution to importance-sample from (the NLL): the one whose samples ``log_q`` is the
        density of. Itself, for every family but the study's sampler."""
        return self

    def detached(self) -> Distribution:
        raise VaelabError(
            f"objective.gradient = dreg is not available for model.posterior = {self.family}; use reparam"
        )


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


class FlowGaussian(PosteriorDistribution, Distribution):
    """q(z | x) of an inverse autoregressive flow: z_0 = mu + sigma * eps, then z_t = step_t(z_{t-1}, h).

    log q(z_T) = log N(eps) - sum log sigma - sum_t log |det dz_t/dz_{t-1}| (Kingma et al. 2016, eq. 14),
    known at the flow's own samples only: ``log_prob`` of an arbitrary z would need the flow inverted.
    ``mean`` is the flow's image of the base mean (eps = 0), not E_q[z], which has no closed form: a
    deterministic code, on the path the decoder is trained on.
    """

    family = "iaf"
    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, context: torch.Tensor, steps: nn.ModuleList) -> None:
        self.loc, self.log_scale, self.context, self.steps = loc, log_scale, context, steps
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def _flow(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(z.shape[:-1])
        for step in self.steps:
            z, step_log_det = step(z, self.context)
            log_det = log_det + step_log_det
        return z, log_det

    def reparameterize(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_det = self._flow(self.loc + eps * self.log_scale.exp())
        return z, standard_normal_log_prob(eps) - self.log_scale.sum(-1) - log_det

    @property
    def mean(self) -> torch.Tensor:
        return self._flow(self.loc)[0]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "the iaf posterior's density at an arbitrary z needs the flow inverted; "
            "log q at its own samples comes from reparameterize / rsample_and_log_prob"
        )


# --- the families: the encoder's output vector -> q(z | x) -------------------------------------------


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


class InverseAutoregressiveFlow(nn.Module):
    """q(z|x): a diagonal Gaussian N(mu, diag sigma^2) pushed through ``steps`` IAF steps conditioned
    on a context h; the encoder outputs mu, log sigma^2 and h (``hidden`` numbers). The steps' MADEs
    are this module's parameters, so they are trained and saved with the model."""

    def __init__(self, latent_dim: int, steps: int, hidden: int) -> None:
        super().__init__()
        self.context_size = hidden
        self.steps = iaf_steps(latent_dim, steps, hidden, self.context_size)

    def param_size(self, latent_dim: int) -> int:
        return 2 * latent_dim + self.context_size

    def forward(self, params: torch.Tensor) -> FlowGaussian:
        mu_and_log_var, context = params.split([params.shape[-1] - self.context_size, self.context_size], dim=-1)
        mu, log_var = mu_and_log_var.chunk(2, dim=-1)
        return FlowGaussian(mu, 0.5 * log_var, context, self.steps)


# --- today's module-level entry points, thin calls of the protocol --------------------------------


# --- registration ----------------------------------------------------------------------------------


def _sampled_as_posterior(config, name: str) -> None:
    if config.prior_sampling == "study":
        raise VaelabError(
            f"model.prior_sampling = study is the diagonal posterior's sampler; model.posterior = {name} "
            "samples its own z (set model.prior_sampling = posterior)"
        )


@POSTERIORS.register(
    "diagonal", "N(mu, diag sigma^2) from the encoder (model.prior_sampling = study: the study's sampler)"
)
def _diagonal(config, prior: nn.Module) -> nn.Module:
    if config.prior_sampling == "study":
        return DiagonalGaussianStudySampling(prior.scale_tril)
    return DiagonalGaussian()


@POSTERIORS.register("full", "N(mu, L L^T), L a Cholesky factor from the encoder (d + d(d+1)/2 numbers)")
def _full(config, prior: nn.Module) -> FullCovarianceGaussian:
    _sampled_as_posterior(config, "full")
    return FullCovarianceGaussian(config.latent_dim)


def flow_hidden(config) -> int:
    """The MADEs' hidden width (and the context size): model.flow_hidden, or max(64, 4d) when it is 0."""
    return config.flow_hidden or max(64, 4 * config.latent_dim)


@POSTERIORS.register(
    "iaf", "inverse autoregressive flow (Kingma et al. 2016): model.flow_steps MADE steps on a diagonal Gaussian"
)
def _iaf(config, prior: nn.Module) -> InverseAutoregressiveFlow:
    _sampled_as_posterior(config, "iaf")
    if config.prior == "vamp":
        raise VaelabError(
            "model.prior = vamp is a mixture of posteriors, which needs their density at any z; "
            "model.posterior = iaf gives it only at its own samples (use diagonal or full)"
        )
    return InverseAutoregressiveFlow(config.latent_dim, config.flow_steps, flow_hidden(config))
