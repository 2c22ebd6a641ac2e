"""Build a FactorVAE: the VAE's slots (``build_slots``) and a discriminator on its codes."""

from __future__ import annotations

from vaelab.config import ModelConfig
from vaelab.core.registry import FAMILIES
from vaelab.model.factorvae.model import FactorVAE
from vaelab.model.vae.build import build_slots

ImageShape = tuple[int, int, int]


@FAMILIES.register(
    "factorvae",
    "FactorVAE (Kim & Mnih 2018): the VAE plus model.tc_weight times a discriminator's total correlation "
    "estimate; the discriminator (model.discriminator_hidden) trains in the same step",
)
def build_factorvae(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> FactorVAE:
    return FactorVAE(*build_slots(config, image_shape, batch), config.tc_weight, config.discriminator_hidden)
