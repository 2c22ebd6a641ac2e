"""The VAE family (``model.family = vae``): one latent layer, encoder -> posterior, prior, decoder -> likelihood."""

from vaelab.model.vae.build import build_slots, build_vae
from vaelab.model.vae.model import VAE

__all__ = ["VAE", "build_slots", "build_vae"]
