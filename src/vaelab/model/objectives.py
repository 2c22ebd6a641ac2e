"""Training objectives. Each maps (model, x) to per-image terms in nats and a scalar loss.

* :class:`ELBO` -- E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), one reparameterised sample, the KL
  in closed form where one is registered (else the single-sample estimate log q(z) - log p(z)),
  optional KL warm-up and free bits. beta = 1, no warm-up, no free bits is the true ELBO.
* :class:`IWAE` -- log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q (Burda et al. 2016).

Reported ``total`` is always the negative bound itself (beta = 1), whatever is optimised.

In data-parallel training each process holds a :class:`Shard` of the global batch; the objectives
then draw the reparameterisation noise of the whole batch and keep their rows, so N processes
compute exactly what one process would on the global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vaelab.distributions.kl import kl_terms
from vaelab.distributions.posteriors import rsample_rows


@dataclass(frozen=True)
class Shard:
    """This process's rows ``start:stop`` of a global batch of ``total`` images (data-parallel training)."""

    start: int
    stop: int
    total: int

    def rsample(self, q, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return rsample_rows(q, sample_shape, slice(self.start, self.stop), self.total)


def _rsample(q, shard: Shard | None, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
    return q.rsample(sample_shape) if shard is None else shard.rsample(q, sample_shape)


def _no_images(x: torch.Tensor) -> Terms:
    """The terms of an empty shard (a global batch smaller than the number of processes); its
    noise has been drawn, so its RNG stays in step with the other processes'."""
    empty = x.new_zeros(0)
    return Terms(x.new_zeros(()), empty, empty, empty)


@dataclass
class Terms:
    loss: torch.Tensor  # scalar minimised by the optimiser (mean over the batch)
    total: torch.Tensor  # per image: the negative bound, nats
    reconstruction: torch.Tensor  # per image: -E_q[log p(x|z)] (single-sample estimate), nats
    kl: torch.Tensor  # per image: KL(q(z|x) || p(z)), nats
    kl_per_dim: torch.Tensor | None = None  # B x d where the KL factorises


def kl_and_sample(q, p, z):
    """Closed-form KL where registered, else the one-sample estimate at ``z``."""
    try:
        return kl_terms(q, p)
    except NotImplementedError:
        return q.log_prob(z) - p.log_prob(z), None


class ELBO:
    def __init__(self, beta: float = 1.0, free_bits: float = 0.0) -> None:
        self.beta = beta
        self.free_bits = free_bits

    def __call__(self, model, x: torch.Tensor, kl_weight: float = 1.0, shard: Shard | None = None) -> Terms:
        if shard is not None and self.free_bits > 0:
            # the free-bits budget is a mean over the whole batch, which a shard does not see
            raise ValueError("free bits are not supported with data-parallel training")
        q = model.q_z(x)
        z = _rsample(q, shard)
        if not len(x):
            return _no_images(x)
        reconstruction = -model.p_x(z).log_prob(x)
        kl, kl_per_dim = kl_and_sample(q, model.p_z(), z)
        penalised_kl = kl
        if self.free_bits > 0:
            if kl_per_dim is None:
                # a non-factorising KL: the budget applies to the whole KL, d * free_bits nats
                penalised_kl = kl.clamp(min=self.free_bits * z.shape[-1])
            else:
                # the budget is per dimension averaged over the batch (Kingma et al. 2016)
                per_dim_mean = kl_per_dim.mean(0)
                penalised_kl = per_dim_mean.clamp(min=self.free_bits).sum().expand_as(kl)
        loss = (reconstruction + self.beta * kl_weight * penalised_kl).mean()
        return Terms(loss, reconstruction + kl, reconstruction, kl, kl_per_dim)


class IWAE:
    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, model, x: torch.Tensor, kl_weight: float = 1.0, shard: Shard | None = None) -> Terms:
        q = model.q_z(x)
        z = _rsample(q, shard, torch.Size((self.k,)))  # k x B x d
        if not len(x):
            return _no_images(x)
        log_px_z = model.p_x(z).log_prob(x)
        log_w = log_px_z + model.p_z().log_prob(z) - q.log_prob(z)
        bound = torch.logsumexp(log_w, 0) - math.log(self.k)
        # the reported split uses the first sample's reconstruction and the closed-form KL
        kl, kl_per_dim = kl_and_sample(q, model.p_z(), z[0])
        return Terms(-bound.mean(), -bound, -log_px_z[0], kl, kl_per_dim)


def make_objective(name: str, beta: float = 1.0, k: int = 1, free_bits: float = 0.0):
    if name == "iwae":
        return IWAE(k)
    return ELBO(beta=beta, free_bits=free_bits)
