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

from vaelab.distributions.posteriors.base import PosteriorDistribution, refuse_study_sampling, standard_normal_log_prob
from vaelab.distributions.posteriors.diagonal import (
    DiagonalGaussian,
    DiagonalGaussianStudySampling,
    DiagonalNormal,
    StudyCholeskySample,
)
from vaelab.distributions.posteriors.full import FullCovarianceGaussian, FullGaussian
from vaelab.distributions.posteriors.iaf import (
    GATE_BIAS,
    MADE,
    FlowGaussian,
    IAFStep,
    InverseAutoregressiveFlow,
    MaskedLinear,
    flow_hidden,
    iaf_steps,
)

__all__ = [
    "DiagonalGaussian",
    "DiagonalGaussianStudySampling",
    "DiagonalNormal",
    "FlowGaussian",
    "FullCovarianceGaussian",
    "FullGaussian",
    "GATE_BIAS",
    "IAFStep",
    "InverseAutoregressiveFlow",
    "MADE",
    "MaskedLinear",
    "PosteriorDistribution",
    "StudyCholeskySample",
    "flow_hidden",
    "iaf_steps",
    "refuse_study_sampling",
    "standard_normal_log_prob",
]
