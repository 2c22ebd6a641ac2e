"""``bernoulli``: p(x | z) = Bernoulli(sigmoid(logits)); on grey levels a cross-entropy, not a log-likelihood."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
)

from vaelab.core.registry import LIKELIHOODS


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod Bernoulli(sigmoid(logits)), evaluated from logits (no sigmoid-then-log)."""

    params_per_channel = 1
    # its mass sums to one over binary images: on grey levels log p(x|z) is a cross-entropy, not a log-density
    binary_images_only = True
    # a pixel that is never on would want logit -inf; 1e-3 (logit -6.9) is already far in the tail
    MEAN_CLAMP = 1e-3

    def forward(self, logits: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output (logits) whose distribution has mean ``mean``."""
        return torch.logit(mean.clamp(self.MEAN_CLAMP, 1 - self.MEAN_CLAMP))


@LIKELIHOODS.register("bernoulli", "Bernoulli from logits; on grey levels a cross-entropy, not a log-likelihood")
def _bernoulli(config, image_shape) -> BernoulliLikelihood:
    return BernoulliLikelihood()
