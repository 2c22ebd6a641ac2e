"""Build a VAE from a :class:`~vaelab.config.ModelConfig` through small registries, one per slot.

Adding a variant means adding one entry to one registry; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vaelab.config import ModelConfig
from vaelab.distributions import (
    BernoulliLikelihood,
    CorrelatedGaussian,
    DiagonalGaussian,
    DiagonalGaussianStudySampling,
    GaussianLikelihood,
    StandardNormal,
    study_covariance,
)
from vaelab.model.vae import VAE
from vaelab.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vaelab.nets.accel import accelerate

ImageShape = tuple[int, int, int]

PRIORS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "standard": lambda c: StandardNormal(c.latent_dim),
    "correlated": lambda c: CorrelatedGaussian(c.prior_cov or study_covariance(c.latent_dim)),
}

LIKELIHOODS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "bernoulli": lambda c: BernoulliLikelihood(),
    "gaussian": lambda c: GaussianLikelihood(c.likelihood_scale),
}


def _posterior(config: ModelConfig, prior: nn.Module) -> nn.Module:
    if config.prior_sampling == "study":
        return DiagonalGaussianStudySampling(prior.scale_tril)
    return DiagonalGaussian()


def _nets(
    config: ModelConfig, image_shape: ImageShape, encoder_out: int, decoder_out: int
) -> tuple[nn.Module, nn.Module]:
    d = config.latent_dim
    if config.arch == "conv":
        return ConvEncoder(image_shape, encoder_out), ConvDecoder(d, image_shape, decoder_out)
    hidden, activation = ([512, 256], "relu") if config.arch == "dense" else (list(config.hidden), config.activation)
    return (
        MLPEncoder(image_shape, hidden, encoder_out, activation),
        MLPDecoder(d, image_shape, hidden, decoder_out, activation),
    )


def build_vae(config: ModelConfig, image_shape: ImageShape) -> VAE:
    config.validate()
    prior = PRIORS[config.prior](config)
    posterior = _posterior(config, prior)
    likelihood = LIKELIHOODS[config.likelihood](config)
    encoder, decoder = _nets(
        config, image_shape, posterior.param_size(config.latent_dim), image_shape[0] * likelihood.params_per_channel
    )
    # this CPU's measured speed choices (layout, fused kernels), applied from outside the networks
    encoder, decoder = accelerate(encoder), accelerate(decoder)
    return VAE(encoder, posterior, prior, decoder, likelihood, config.latent_dim, image_shape)
