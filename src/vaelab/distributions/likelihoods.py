"""Likelihoods p(x | z): map the decoder's output image(s) to a distribution over images.

The decoder produces ``params_per_channel`` maps per image channel; each likelihood here is a
true (normalised) log-density over the C x H x W event, except that the Bernoulli family is also
used with grey-level targets in [0, 1], as the study and most tutorials do (a cross-entropy).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from vaelab.core.registry import LIKELIHOODS


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod Bernoulli(sigmoid(logits)), evaluated from logits (no sigmoid-then-log)."""

    params_per_channel = 1
    # a pixel that is never on would want logit -inf; 1e-3 (logit -6.9) is already far in the tail
    MEAN_CLAMP = 1e-3

    def forward(self, logits: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output (logits) whose distribution has mean ``mean``."""
        return torch.logit(mean.clamp(self.MEAN_CLAMP, 1 - self.MEAN_CLAMP))


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(x; mu(z), scale^2 I) with a fixed scale, normalising constant included."""

    params_per_channel = 1

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, mean: torch.Tensor) -> Distribution:
        return Independent(Normal(mean, self.scale, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output whose distribution has mean ``mean`` (the mean itself)."""
        return mean.clone()

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


@LIKELIHOODS.register("bernoulli", "Bernoulli from logits; on grey levels a cross-entropy, not a log-likelihood")
def _bernoulli(config) -> BernoulliLikelihood:
    return BernoulliLikelihood()


@LIKELIHOODS.register("gaussian", "Gaussian with a fixed scale (model.likelihood_scale), normalised")
def _gaussian(config) -> GaussianLikelihood:
    return GaussianLikelihood(config.likelihood_scale)
