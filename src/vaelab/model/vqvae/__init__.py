"""The VQ-VAE family (``model.family = vqvae``): a codebook-quantised grid of codes and a learned prior over them."""

from vaelab.model.vqvae.build import build_vqvae
from vaelab.model.vqvae.model import VQVAE, VectorQuantizer
from vaelab.model.vqvae.nets import CodePrior

__all__ = ["VQVAE", "CodePrior", "VectorQuantizer", "build_vqvae"]
