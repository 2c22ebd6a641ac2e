"""Training objectives. Each maps (model, x) to per-image terms in nats and a scalar loss.

* :class:`ELBO` -- E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), one reparameterised sample, the KL
  in closed form where one is registered (else the single-sample estimate log q(z) - log p(z)),
  optional KL warm-up and free bits. beta = 1, no warm-up, no free bits is the true ELBO.
* :class:`IWAE` -- log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q (Burda et al. 2016), with the
  plain reparameterised gradient or the doubly reparameterised one (DReG, Tucker et al. 2019) for
  the encoder: same bound, same expected gradient, less noise as k grows.

Reported ``total`` is always the negative bound itself (beta = 1), whatever is optimised.

Both are generic over the model protocol (``vaelab.model.base``): the ELBO asks the model for its
parts, the IWAE for its importance log-weights. The noise, and with it data-parallel training's
noise protocol, comes through the step's :class:`~vaelab.model.base.Context`.
"""

from __future__ import annotations

import math

import torch

from vaelab.core.registry import OBJECTIVES
from vaelab.model.base import Context, Terms


def _no_examples(x: torch.Tensor) -> Terms:
    """The terms of an empty shard (a global batch smaller than the number of processes); its
    noise has been drawn, so its RNG stays in step with the other processes'."""
    empty = x.new_zeros(0)
    return Terms(x.new_zeros(()), empty, empty, empty)


class ELBO:
    def __init__(self, beta: float = 1.0, free_bits: float = 0.0) -> None:
        self.beta = beta
        self.free_bits = free_bits

    def __call__(self, model, x: torch.Tensor, ctx: Context | None = None) -> Terms:
        ctx = ctx or Context()
        if ctx.shard is not None and self.free_bits > 0:
            # the free-bits budget is a mean over the whole batch, which a shard does not see
            raise ValueError("free bits are not supported with data-parallel training")
        if not len(x):
            model.elbo(x, ctx)  # draws this shard's share of the noise
            return _no_examples(x)
        parts = model.elbo(x, ctx)
        kl = parts.kl
        penalised_kl = kl
        if self.free_bits > 0:
            if parts.kl_per_dim is None:
                # a non-factorising KL: the budget applies to the whole KL, d * free_bits nats
                penalised_kl = kl.clamp(min=self.free_bits * model.latent_dim)
            else:
                # the budget is per dimension averaged over the batch (Kingma et al. 2016)
                per_dim_mean = parts.kl_per_dim.mean(0)
                penalised_kl = per_dim_mean.clamp(min=self.free_bits).sum().expand_as(kl)
        loss = (parts.reconstruction + self.beta * ctx.kl_weight * penalised_kl).mean()
        return Terms(loss, parts.reconstruction + kl, parts.reconstruction, kl, parts.kl_per_dim, parts.extra)


class _ImportanceWeightedPath(torch.autograd.Function):
    """Identity on z (k x B x d) whose backward multiplies each sample's gradient by its normalised
    importance weight w~_i.

    The weights are only known once the decoder has run, after z was used, so they reach the
    backward through a second output, ``tap`` (zeros, k x B): the loss adds ``(tap * w~).sum()``,
    which is 0 in value and hands back w~ times the loss's outer scale as tap's gradient; the
    backward normalises that scale away. A pure function of its inputs, so it compiles.
    """

    @staticmethod
    def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z.clone(), z.new_zeros(z.shape[:-1])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor, grad_tap: torch.Tensor) -> torch.Tensor:
        weights = grad_tap / grad_tap.sum(0, keepdim=True)
        return grad_z * weights.unsqueeze(-1)


class IWAE:
    """The importance-weighted bound. ``gradient`` picks the encoder's gradient estimator:

    * ``"reparam"``: the plain gradient of the bound, sum_i w~_i d/dphi log w_i (Burda et al.);
      its signal-to-noise ratio for the encoder falls like 1/sqrt(k) (Rainforth et al. 2018).
    * ``"dreg"``: sum_i w~_i^2 (d log w_i / d z_i)(d z_i / d phi), with q's parameters held fixed
      inside log w_i (Tucker et al. 2019, eq. 6). Unbiased for the same gradient, without the
      score-function term that makes the plain one noisy. The decoder's and prior's gradients are
      the plain ones either way.
    """

    def __init__(self, k: int, gradient: str = "reparam") -> None:
        if gradient not in ("reparam", "dreg"):
            raise ValueError(f"unknown IWAE gradient estimator {gradient!r}; known: reparam, dreg")
        self.k = k
        self.gradient = gradient

    def __call__(self, model, x: torch.Tensor, ctx: Context | None = None) -> Terms:
        ctx = ctx or Context()
        tap: list[torch.Tensor] = []

        def dreg_path(z: torch.Tensor) -> torch.Tensor:
            z_path, weights_tap = _ImportanceWeightedPath.apply(z)
            tap.append(weights_tap)
            return z_path

        if not len(x):
            model.log_weights(x, self.k, ctx)  # draws this shard's share of the noise
            return _no_examples(x)
        weights = model.log_weights(x, self.k, ctx, dreg_path if self.gradient == "dreg" else None)
        bound = torch.logsumexp(weights.log_w, 0) - math.log(self.k)
        loss = -bound.mean()
        if tap:
            loss = loss + (tap[0] * torch.softmax(weights.log_w.detach(), 0)).sum()
        parts = weights.parts  # the report's split: the first sample's reconstruction, the KL
        return Terms(loss, -bound, parts.reconstruction, parts.kl, parts.kl_per_dim, parts.extra)


@OBJECTIVES.register("elbo", "the ELBO, one sample (beta, KL warm-up and free bits optional)")
def _elbo(config) -> ELBO:
    return ELBO(beta=config.beta, free_bits=config.free_bits)


@OBJECTIVES.register("iwae", "the k-sample importance-weighted bound (gradient: reparam or dreg)")
def _iwae(config) -> IWAE:
    return IWAE(config.k, config.gradient)


def make_objective(name: str, beta: float = 1.0, k: int = 1, free_bits: float = 0.0, gradient: str = "reparam"):
    """The objective registered as ``name``; an unknown name is an error, never a fallback."""
    from vaelab.config import ObjectiveConfig

    config = ObjectiveConfig(name=name, beta=beta, k=k, free_bits=free_bits, gradient=gradient)
    return OBJECTIVES.get(name)(config)
