"""Posterior families q(z | x): map the encoder's output vector to a distribution over z."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal

from vaelab.core.registry import POSTERIORS


class DiagonalGaussian(nn.Module):
    """q(z|x) = N(mu, diag sigma^2); the encoder outputs mu and log sigma^2 (the study's choice)."""

    def param_size(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def forward(self, params: torch.Tensor) -> Independent:
        mu, log_var = params.chunk(2, dim=-1)
        return Independent(Normal(mu, torch.exp(0.5 * log_var), validate_args=False), 1, validate_args=False)


class StudyCholeskySample(Independent):
    """The study's posterior sampler, kept to compare with its figures: z = mu + L eps.

    L is the *prior's* Cholesky factor, so the encoder's sigma never enters the sample, while the
    KL term is still computed from N(mu, diag sigma^2) (it inherits Independent's KL rules). The
    pair is therefore not an ELBO of any one posterior; vaelab's default is z = mu + sigma * eps.
    """

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, scale_tril: torch.Tensor) -> None:
        super().__init__(Normal(mu, sigma, validate_args=False), 1, validate_args=False)
        self.scale_tril = scale_tril

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        mu = self.base_dist.loc
        eps = torch.randn(torch.Size(sample_shape) + mu.shape, dtype=mu.dtype, device=mu.device)
        return reparameterize(self, eps)


class DiagonalGaussianStudySampling(DiagonalGaussian):
    """DiagonalGaussian whose samples follow the study's z = mu + L eps (see StudyCholeskySample)."""

    def __init__(self, prior_scale_tril: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prior_scale_tril", prior_scale_tril.clone())

    def forward(self, params: torch.Tensor) -> StudyCholeskySample:
        mu, log_var = params.chunk(2, dim=-1)
        return StudyCholeskySample(mu, torch.exp(0.5 * log_var), self.prior_scale_tril)


def reparameterize(q: Independent, eps: torch.Tensor) -> torch.Tensor:
    """The sample ``q.rsample`` makes from the standard normal noise ``eps`` (same shape as a sample)."""
    if isinstance(q, StudyCholeskySample):
        return q.base_dist.loc + eps @ q.scale_tril.transpose(-1, -2)
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        return q.base_dist.loc + eps * q.base_dist.scale
    raise TypeError(f"no location-scale form known for {type(q).__name__}")


def detached(q: Independent) -> Independent:
    """The same posterior with its parameters cut from the graph: ``log_prob`` then passes gradient
    to z but not to the encoder's outputs (what the doubly reparameterised IWAE gradient needs)."""
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        base = Normal(q.base_dist.loc.detach(), q.base_dist.scale.detach(), validate_args=False)
        return Independent(base, q.reinterpreted_batch_ndims, validate_args=False)
    raise TypeError(f"no detached form known for {type(q).__name__}")


def rsample_rows(q: Independent, sample_shape: torch.Size, rows: slice, total: int) -> torch.Tensor:
    """``q.rsample(sample_shape)`` for the images ``rows`` of a batch of ``total`` images, when q holds
    only those rows (one process of data-parallel training).

    The noise of the whole batch is drawn, exactly as one process holding all ``total`` images would
    draw it, and this process keeps its rows: every process's RNG stays in step with the
    single-process run, and the images get the very noise they would get there.
    """
    loc = q.base_dist.loc
    shape = torch.Size(sample_shape) + (total,) + loc.shape[-1:]
    eps = torch.empty(shape, dtype=loc.dtype, device=loc.device).normal_()  # as torch's Normal.rsample
    return reparameterize(q, eps[..., rows, :])


@POSTERIORS.register("diagonal", "N(mu, diag sigma^2) from the encoder (model.prior_sampling = study: the study's sampler)")
def _diagonal(config, prior: nn.Module) -> nn.Module:
    if config.prior_sampling == "study":
        return DiagonalGaussianStudySampling(prior.scale_tril)
    return DiagonalGaussian()
