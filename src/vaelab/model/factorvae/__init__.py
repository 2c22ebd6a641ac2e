"""The FactorVAE family (``model.family = factorvae``): the VAE with a discriminator's total correlation penalty."""

from vaelab.model.factorvae.build import build_factorvae
from vaelab.model.factorvae.model import FactorVAE, discriminator_network, permute_dims

__all__ = ["FactorVAE", "build_factorvae", "discriminator_network", "permute_dims"]
