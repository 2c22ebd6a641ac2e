"""Likelihoods p(x | z): map the decoder's output image(s) to a distribution over images.

The decoder produces ``params_per_channel`` maps per image channel; each likelihood here is a
true (normalised) log-density over the C x H x W event in [0, 1] (the logistic mixture: a
log-probability over the 256 levels of 8-bit images), except that the Bernoulli family is also used
with grey-level targets in [0, 1], as the study and most tutorials do (a cross-entropy).

``output_for_mean(mean)`` gives the decoder output whose distribution has mean ``mean`` (C x H x W,
or one number per channel), for ``model.decoder_bias = data-mean``; ``.mean`` of the distribution
is the image the figures show.
"""

from __future__ import annotations

from vaelab.distributions.likelihoods.bernoulli import BernoulliLikelihood
from vaelab.distributions.likelihoods.continuous_bernoulli import (
    ContinuousBernoulliLikelihood,
    StableContinuousBernoulli,
    continuous_bernoulli_log_normalizer,
    continuous_bernoulli_mean,
)
from vaelab.distributions.likelihoods.gaussian import (
    MIN_SCALE,
    DecodedGaussianLikelihood,
    GaussianLikelihood,
    LearnedScaleGaussianLikelihood,
)
from vaelab.distributions.likelihoods.logistic_mixture import (
    LEVELS,
    LOG_SCALE_MIN,
    DiscretizedLogisticMixture,
    LogisticMixtureLikelihood,
)

__all__ = [
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "DecodedGaussianLikelihood",
    "DiscretizedLogisticMixture",
    "GaussianLikelihood",
    "LEVELS",
    "LOG_SCALE_MIN",
    "LearnedScaleGaussianLikelihood",
    "LogisticMixtureLikelihood",
    "MIN_SCALE",
    "StableContinuousBernoulli",
    "continuous_bernoulli_log_normalizer",
    "continuous_bernoulli_mean",
]
