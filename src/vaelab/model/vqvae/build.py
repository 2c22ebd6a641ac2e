"""Build a VQ-VAE from a :class:`~vaelab.config.ModelConfig`: its own grid networks and prior, the
likelihood from the registry."""

from __future__ import annotations

from vaelab.config import PRIOR_HEADS, ModelConfig
from vaelab.core.memory import require_memory
from vaelab.core.registry import FAMILIES, LIKELIHOODS
from vaelab.errors import VaelabError
from vaelab.model.build import ImageShape
from vaelab.model.vqvae.model import VQVAE
from vaelab.model.vqvae.nets import WIDTH, CodePrior, GridDecoder, GridEncoder, check_divisible

# keys of the slot-built families that mean nothing here, with the value they must keep
NOT_READ = {"arch": "conv", "latent_dim": 2, "posterior": "diagonal", "prior": "standard", "batch_norm": False}


def _check(config: ModelConfig, image_shape: ImageShape) -> None:
    for key, default in NOT_READ.items():
        if getattr(config, key) != default:
            raise VaelabError(
                f"model.{key} does not apply to the vqvae family (its code is an H/4 x W/4 grid of model.code_dim "
                f"vectors from a codebook of model.codebook_size, its prior learned over them): leave it at {default!r}"
            )
    check_divisible(image_shape)


@FAMILIES.register(
    "vqvae",
    "VQ-VAE (van den Oord et al. 2017): a grid of codes from an EMA codebook (model.codebook_size x "
    "model.code_dim), then a causal transformer prior over them as a second stage (model.prior_epochs)",
)
def build_vqvae(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> VQVAE:
    config.validate()
    _check(config, image_shape)
    c, h, w = image_shape
    positions = (h // 4) * (w // 4)
    # the largest activations: the decoder's first layers on the batch, and the prior's attention maps
    activations = batch * (6 * WIDTH * h * w // 4 + 8 * config.prior_width * positions + PRIOR_HEADS * positions**2)
    weights = config.prior_layers * 8 * config.prior_width**2 + 2 * config.codebook_size * config.prior_width
    require_memory(
        4 * (4 * weights + 2 * activations),
        f"a vqvae model (prior width {config.prior_width}, {config.prior_layers} layers, {positions} code positions) "
        f"trained on batches of {batch} images of {tuple(image_shape)}",
        "lower model.prior_width, model.prior_layers or train.batch_size",
    )
    likelihood = LIKELIHOODS.get(config.likelihood)(config, image_shape)
    prior = CodePrior(config.codebook_size, positions, config.prior_width, config.prior_layers, PRIOR_HEADS)
    model = VQVAE(
        GridEncoder(image_shape, config.code_dim),
        GridDecoder(config.code_dim, c * likelihood.params_per_channel),
        likelihood,
        prior,
        image_shape,
        config.codebook_size,
        config.code_dim,
        config.commitment,
        config.codebook_decay,
        config.prior_epochs,
    )
    model.enter_stage(0)
    return model
