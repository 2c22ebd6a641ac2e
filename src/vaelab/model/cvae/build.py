"""Build a CVAE from a :class:`~vaelab.config.ModelConfig`: the VAE's slots, the networks widened for the label."""

from __future__ import annotations

from dataclasses import replace

from vaelab.config import ModelConfig
from vaelab.core.registry import ARCHITECTURES, FAMILIES, LIKELIHOODS, POSTERIORS, PRIORS
from vaelab.model.build import check_memory
from vaelab.model.cvae.model import CVAE
from vaelab.nets.accel import accelerate

ImageShape = tuple[int, int, int]


@FAMILIES.register(
    "cvae",
    "conditional VAE (Sohn et al. 2015): the label one-hot into encoder (as channels) and decoder (beside z); "
    "model.classes labels",
)
def build_cvae(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> CVAE:
    """The VAE of ``config`` with the networks of ``model.arch`` built for the label too: the encoder for
    C + classes input channels, the decoder for a latent_dim + classes input."""
    config.validate()
    c, h, w = image_shape
    k = config.classes
    labelled_images = (c + k, h, w)
    check_memory(config, labelled_images, batch)  # the encoder's input; a slight overestimate of the decoder
    prior = PRIORS.get(config.prior)(config, image_shape)
    posterior = POSTERIORS.get(config.posterior)(config, prior)
    likelihood = LIKELIHOODS.get(config.likelihood)(config, image_shape)
    architecture = ARCHITECTURES.get(config.arch)
    decoder_out = c * likelihood.params_per_channel
    encoder, _ = architecture(config, labelled_images, posterior.param_size(config.latent_dim), decoder_out)
    _, decoder = architecture(
        replace(config, latent_dim=config.latent_dim + k),
        image_shape,
        posterior.param_size(config.latent_dim),
        decoder_out,
    )
    model = CVAE(
        accelerate(encoder), posterior, prior, accelerate(decoder), likelihood, config.latent_dim, image_shape, k
    )
    model.p_z()  # a prior that needs the unlabelled posterior (vamp) is refused here, in one line
    return model
