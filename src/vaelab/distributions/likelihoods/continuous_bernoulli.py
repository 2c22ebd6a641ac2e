"""``continuous-bernoulli`` (Loaiza-Ganem & Cunningham 2019): the Bernoulli normalised over [0, 1], so grey
levels get a true log-likelihood."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import (
    ContinuousBernoulli,
    Distribution,
    Independent,
)

from vaelab.core.registry import LIKELIHOODS

_TAYLOR_BELOW = 0.1  # |logit| under which the series replace the closed forms (which cancel there)


def continuous_bernoulli_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(eta), C(eta) = eta / (e^eta - 1), so that p(x) = C(eta) e^(eta x) integrates to 1 on [0, 1].

    Written as log|eta| - max(eta, 0) - log(1 - e^-|eta|), which neither overflows nor cancels for
    |eta| >= 0.1; below, the series -eta/2 - eta^2/24 + eta^4/2880 (next term eta^6/181440).
    """
    a = logits.abs()
    small = a < _TAYLOR_BELOW
    a_safe = torch.where(small, torch.full_like(a, _TAYLOR_BELOW), a)  # no log(0) even in the unused branch
    closed = a_safe.log() - logits.clamp(min=0) - torch.log(-torch.expm1(-a_safe))
    series = -logits / 2 - logits**2 / 24 + logits**4 / 2880
    return torch.where(small, series, closed)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] = 1 / (1 - e^-eta) - 1 / eta; below |eta| = 0.1 the series 1/2 + eta/12 - eta^3/720.

    The first term is written with e^-|eta| only (for eta < 0 it is -e^-|eta| / (1 - e^-|eta|)), so
    neither it nor its gradient overflows.
    """
    small = logits.abs() < _TAYLOR_BELOW
    eta = torch.where(small, torch.full_like(logits, _TAYLOR_BELOW), logits)
    decay = torch.exp(-eta.abs())
    closed = torch.where(eta > 0, torch.ones_like(decay), -decay) / -torch.expm1(-eta.abs()) - 1 / eta
    series = 0.5 + logits / 12 - logits**3 / 720
    return torch.where(small, series, closed)


class StableContinuousBernoulli(ContinuousBernoulli):
    """torch's ContinuousBernoulli with ``log_prob`` and ``mean`` computed from the logits.

    torch computes both from probs = sigmoid(logits), which in float32 rounds to 0 or 1 beyond
    |logit| ~ 16: there its log-density no longer integrates to 1 and its mean stops moving (the
    decoder drives a background pixel's logit far beyond that). Its other methods are torch's.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.logits * value + continuous_bernoulli_log_normalizer(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return continuous_bernoulli_mean(self.logits)


class ContinuousBernoulliLikelihood(nn.Module):
    """p(x|z) = prod C(eta) e^(eta x) on [0, 1] (Loaiza-Ganem & Cunningham 2019): the Bernoulli's shape,
    normalised as a density for grey levels, so -log p(x|z) is a real negative log-likelihood."""

    params_per_channel = 1
    # a mean of 0.01 already needs logit ~ -100 (the mean approaches 0 like -1/eta)
    MEAN_CLAMP = 0.01
    _BRACKET = 200.0  # mean(-200) = 0.005 < MEAN_CLAMP

    def forward(self, logits: torch.Tensor) -> Distribution:
        return Independent(StableContinuousBernoulli(logits=logits, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The logits whose mean is ``mean``: the mean increases with eta, so bisection finds them."""
        target = mean.double().clamp(self.MEAN_CLAMP, 1 - self.MEAN_CLAMP)
        lo, hi = torch.full_like(target, -self._BRACKET), torch.full_like(target, self._BRACKET)
        for _ in range(64):
            mid = (lo + hi) / 2
            below = continuous_bernoulli_mean(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return ((lo + hi) / 2).to(mean.dtype)


@LIKELIHOODS.register(
    "continuous-bernoulli", "continuous Bernoulli from logits: a normalised density for grey levels in [0, 1]"
)
def _continuous_bernoulli(config, image_shape) -> ContinuousBernoulliLikelihood:
    return ContinuousBernoulliLikelihood()
