"""Build the Gumbel-softmax joint VAE: the VAE's slots, K logits more from the encoder, [z, c] into the decoder."""

from __future__ import annotations

from dataclasses import replace

from vaelab.config import ModelConfig
from vaelab.core.registry import ARCHITECTURES, FAMILIES, LIKELIHOODS, POSTERIORS, PRIORS
from vaelab.model.build import check_memory
from vaelab.model.gumbel.model import GumbelSoftmaxVAE
from vaelab.nets.accel import accelerate

ImageShape = tuple[int, int, int]


@FAMILIES.register(
    "gumbel",
    "continuous z and one categorical c of model.classes values (JointVAE), c relaxed by Gumbel-softmax "
    "(Jang et al. 2017), temperature annealed",
)
def build_gumbel(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> GumbelSoftmaxVAE:
    config.validate()
    k = config.classes
    check_memory(config, image_shape, batch)
    prior = PRIORS.get(config.prior)(config, image_shape)
    posterior = POSTERIORS.get(config.posterior)(config, prior)
    likelihood = LIKELIHOODS.get(config.likelihood)(config, image_shape)
    encoder_out = posterior.param_size(config.latent_dim) + k
    decoder_out = image_shape[0] * likelihood.params_per_channel
    architecture = ARCHITECTURES.get(config.arch)
    encoder, _ = architecture(config, image_shape, encoder_out, decoder_out)
    _, decoder = architecture(replace(config, latent_dim=config.latent_dim + k), image_shape, encoder_out, decoder_out)
    model = GumbelSoftmaxVAE(
        accelerate(encoder), posterior, prior, accelerate(decoder), likelihood, config.latent_dim, image_shape, k
    )
    model.p_z()  # a prior built from the posterior (vamp) is refused here, in one line
    return model
