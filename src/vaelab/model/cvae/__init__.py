"""The conditional VAE family (``model.family = cvae``): labels one-hot into encoder and decoder."""

from vaelab.model.conditioning import Conditioned
from vaelab.model.cvae.build import build_cvae
from vaelab.model.cvae.model import CVAE

__all__ = ["CVAE", "Conditioned", "build_cvae"]
