"""Build a VAE from a :class:`~vaelab.config.ModelConfig`, one registry per slot (``vaelab.core.registry``).

Adding a variant means registering it where it is defined; nothing here changes.
"""

from __future__ import annotations

from vaelab.config import ModelConfig
from vaelab.core.registry import ARCHITECTURES, LIKELIHOODS, POSTERIORS, PRIORS
from vaelab.model.vae import VAE
from vaelab.nets.accel import accelerate

ImageShape = tuple[int, int, int]


def build_vae(config: ModelConfig, image_shape: ImageShape) -> VAE:
    """The model ``config`` names, each slot taken from its registry."""
    config.validate()
    prior = PRIORS.get(config.prior)(config)
    posterior = POSTERIORS.get(config.posterior)(config, prior)
    likelihood = LIKELIHOODS.get(config.likelihood)(config)
    encoder, decoder = ARCHITECTURES.get(config.arch)(
        config, image_shape, posterior.param_size(config.latent_dim), image_shape[0] * likelihood.params_per_channel
    )
    # this CPU's measured speed choices (layout, fused kernels), applied from outside the networks
    encoder, decoder = accelerate(encoder), accelerate(decoder)
    return VAE(encoder, posterior, prior, decoder, likelihood, config.latent_dim, image_shape)
