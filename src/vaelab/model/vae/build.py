"""Build a VAE from a :class:`~vaelab.config.ModelConfig`, one registry per slot (``vaelab.core.registry``)."""

from __future__ import annotations

from vaelab.config import ModelConfig
from vaelab.core.registry import ARCHITECTURES, FAMILIES, LIKELIHOODS, POSTERIORS, PRIORS
from vaelab.model.build import ImageShape, check_memory
from vaelab.model.vae.model import VAE
from vaelab.nets.accel import accelerate


def build_slots(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> tuple:
    """(encoder, posterior, prior, decoder, likelihood, latent_dim, image_shape), each slot taken from its
    registry; refused first if training on ``batch`` images at a time (times importance samples) would not
    fit in memory."""
    config.validate()
    check_memory(config, image_shape, batch)
    prior = PRIORS.get(config.prior)(config, image_shape)
    posterior = POSTERIORS.get(config.posterior)(config, prior)
    likelihood = LIKELIHOODS.get(config.likelihood)(config, image_shape)
    encoder, decoder = ARCHITECTURES.get(config.arch)(
        config, image_shape, posterior.param_size(config.latent_dim), image_shape[0] * likelihood.params_per_channel
    )
    # this CPU's measured speed choices (layout, fused kernels), applied from outside the networks
    encoder, decoder = accelerate(encoder), accelerate(decoder)
    return encoder, posterior, prior, decoder, likelihood, config.latent_dim, image_shape


@FAMILIES.register("vae", "one latent layer: encoder -> posterior, prior, decoder -> likelihood (model.*)")
def build_vae(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> VAE:
    """The model ``config`` names (:func:`build_slots`)."""
    return VAE(*build_slots(config, image_shape, batch))
