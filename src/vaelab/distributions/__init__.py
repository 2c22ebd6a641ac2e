"""Priors, posterior families and likelihoods, as torch.distributions objects."""

from vaelab.distributions import kl  # noqa: F401  (registers the closed-form KLs)
from vaelab.distributions.kl import kl_terms
from vaelab.distributions.likelihoods import BernoulliLikelihood, GaussianLikelihood
from vaelab.distributions.posteriors import DiagonalGaussian, DiagonalGaussianStudySampling
from vaelab.distributions.priors import CorrelatedGaussian, StandardNormal, study_covariance

__all__ = [
    "BernoulliLikelihood",
    "CorrelatedGaussian",
    "DiagonalGaussian",
    "DiagonalGaussianStudySampling",
    "GaussianLikelihood",
    "StandardNormal",
    "kl_terms",
    "study_covariance",
]
