"""Priors p(z): modules, so that learned priors (a mixture, the VampPrior) can own parameters.

Every prior is a :class:`Prior`: ``prior(q_z)`` is p(z) as a torch Distribution over vectors of
``latent_dim`` numbers (``q_z``, the model's map from images to q(z | x), is used by priors built
from the posterior and ignored by the others), ``prior.sample(n, generator, q_z)`` draws from a
torch.Generator, and ``prior.correlated_frame()`` tells the figures whether to lay their grids out in
a correlated Gaussian's whitened coordinates.
"""

from __future__ import annotations

from vaelab.distributions.priors import standard  # noqa: F401  (registered first: the default)
from vaelab.distributions.priors.base import PosteriorMap, Prior, standard_normal_noise
from vaelab.distributions.priors.correlated import STUDY_CORRELATION, CorrelatedGaussian, study_covariance
from vaelab.distributions.priors.learnable import LearnableGaussian
from vaelab.distributions.priors.mog import GaussianMixture
from vaelab.distributions.priors.standard import StandardNormal
from vaelab.distributions.priors.vamp import VampPrior

__all__ = [
    "CorrelatedGaussian",
    "GaussianMixture",
    "LearnableGaussian",
    "PosteriorMap",
    "Prior",
    "STUDY_CORRELATION",
    "StandardNormal",
    "VampPrior",
    "standard_normal_noise",
    "study_covariance",
]
