"""Closed-form KL divergences that torch.distributions does not register, added to its KL registry.

After importing this module, ``torch.distributions.kl_divergence(q, p)`` also works for a
diagonal Gaussian posterior against a full-covariance Gaussian prior, and for a full-covariance
posterior against a diagonal Gaussian prior (torch has the full-against-full rule). ``kl_terms`` returns the KL
per latent dimension too where both sides factorise (for free bits and the per-dimension report).
"""

from __future__ import annotations

import torch
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
    register_kl,
)


def diagonal_normal_parts(dist: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loc, scale) of a diagonal Gaussian over vectors, or None if ``dist`` is not one."""
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal) and dist.reinterpreted_batch_ndims == 1:
        return dist.base_dist.loc, dist.base_dist.scale
    return None


@register_kl(Independent, MultivariateNormal)
def kl_diagonal_normal_full_normal(q: Independent, p: MultivariateNormal) -> torch.Tensor:
    """KL(N(mu, diag s^2) || N(m, Sigma)), Sigma = L L^T:

    0.5 * [ tr(Sigma^-1 diag s^2) + (m - mu)^T Sigma^-1 (m - mu) - d + log|Sigma| - sum log s^2 ].
    With L^-1 computed once, tr(Sigma^-1 diag s^2) = sum_j s_j^2 (Sigma^-1)_jj and the quadratic form
    is |L^-1 (mu - m)|^2; no d x d matrix per image is formed.
    """
    parts = diagonal_normal_parts(q)
    if parts is None:
        raise NotImplementedError("closed-form KL only for a diagonal Normal against a MultivariateNormal")
    mu, s = parts
    L = p.scale_tril
    d = mu.shape[-1]
    eye = torch.eye(d, dtype=L.dtype, device=L.device)
    L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    precision_diag = L_inv.pow(2).sum(-2)  # (Sigma^-1)_jj = sum_i (L^-1)_ij^2
    trace = (s.pow(2) * precision_diag).sum(-1)
    whitened = (L_inv @ (mu - p.loc).unsqueeze(-1)).squeeze(-1)
    mahalanobis = whitened.pow(2).sum(-1)
    log_det_sigma = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    log_det_q = 2 * s.log().sum(-1)
    return 0.5 * (trace + mahalanobis - d + log_det_sigma - log_det_q)


@register_kl(MultivariateNormal, Independent)
def kl_full_normal_diagonal_normal(q: MultivariateNormal, p: Independent) -> torch.Tensor:
    """KL(N(mu, L L^T) || N(m, diag s^2)):

    0.5 * [ sum_j (L L^T)_jj / s_j^2 + sum_j ((mu_j - m_j) / s_j)^2 - d + sum log s^2 - 2 sum log L_jj ],
    (L L^T)_jj being the squared length of L's row j.
    """
    parts = diagonal_normal_parts(p)
    if parts is None:
        raise NotImplementedError("closed-form KL only for a MultivariateNormal against a diagonal Normal")
    m, s = parts
    L = q.scale_tril
    d = q.loc.shape[-1]
    trace = (L.pow(2).sum(-1) / s.pow(2)).sum(-1)
    mahalanobis = ((q.loc - m) / s).pow(2).sum(-1)
    log_det_p = 2 * s.log().sum(-1)
    log_det_q = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - d + log_det_p - log_det_q)


def kl_terms(q: Distribution, p: Distribution) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closed-form KL(q || p) per image, and per latent dimension where both sides factorise.

    Raises NotImplementedError where no closed form is registered (the objective then estimates it).
    """
    q_parts, p_parts = diagonal_normal_parts(q), diagonal_normal_parts(p)
    if q_parts is not None and p_parts is not None:
        per_dim = kl_divergence(q.base_dist, p.base_dist)
        return per_dim.sum(-1), per_dim
    return kl_divergence(q, p), None


def kl_and_sample(q, p, z: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closed-form KL(q || p) where one is registered, else the one-sample estimate log q(z) - log p(z)."""
    try:
        return kl_terms(q, p)
    except NotImplementedError:
        return log_q - p.log_prob(z), None
