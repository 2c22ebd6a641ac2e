"""Build a hierarchical VAE: the architecture registry's networks between x and z_1, MLPs between layers."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from vaelab.config import ModelConfig
from vaelab.core.registry import ARCHITECTURES, FAMILIES, LIKELIHOODS, PRIORS
from vaelab.errors import VaelabError
from vaelab.model.build import ImageShape, check_memory
from vaelab.model.hierarchical.model import HierarchicalVAE
from vaelab.nets.accel import accelerate
from vaelab.nets.mlp import mlp


def _check(config: ModelConfig) -> list[int]:
    sizes = [int(s) for s in config.stochastic_layers]
    if len(sizes) < 2:
        raise VaelabError(
            "model.family = hierarchical needs model.stochastic_layers: two or more latent sizes, bottom to top "
            f"(Burda et al.: [100, 50]); got {sizes}"
        )
    if config.latent_dim != sizes[-1]:
        raise VaelabError(
            f"model.latent_dim is the top layer's size: set it to {sizes[-1]} (the last of model.stochastic_layers), "
            f"got {config.latent_dim}"
        )
    # the layers are diagonal Gaussians under N(0, I) at the top; other slots are the vae family's
    for key, value, only in (("prior", config.prior, "standard"), ("posterior", config.posterior, "diagonal")):
        if value != only:
            raise VaelabError(f"model.{key} = {value} does not apply to the hierarchical family (it uses {only})")
    return sizes


@FAMILIES.register(
    "hierarchical",
    "L >= 2 Gaussian latent layers (model.stochastic_layers, bottom to top); model.inference: bottom-up "
    "(Burda et al. 2016) or ladder (Sønderby et al. 2016)",
)
def build_hierarchical(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> HierarchicalVAE:
    config.validate()
    sizes = _check(config)
    bottom = replace(config, latent_dim=sizes[0])  # the x <-> z_1 networks, the largest part
    check_memory(bottom, image_shape, batch)
    likelihood = LIKELIHOODS.get(config.likelihood)(config, image_shape)
    encoder, decoder = ARCHITECTURES.get(config.arch)(
        bottom, image_shape, 2 * sizes[0], image_shape[0] * likelihood.params_per_channel
    )
    hidden, activation, batch_norm = list(config.layer_hidden), config.activation, config.batch_norm
    up = nn.ModuleList(mlp([a, *hidden, 2 * b], activation, batch_norm) for a, b in zip(sizes, sizes[1:]))
    down = nn.ModuleList(mlp([b, *hidden, 2 * a], activation, batch_norm) for a, b in zip(sizes, sizes[1:]))
    return HierarchicalVAE(
        accelerate(encoder), up, down, accelerate(decoder), likelihood, PRIORS.get("standard")(config, image_shape),
        sizes, image_shape, config.inference,
    )  # fmt: skip
