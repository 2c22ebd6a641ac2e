"""The joint continuous + categorical family (``model.family = gumbel``), Gumbel-softmax relaxed."""

from vaelab.model.gumbel.build import build_gumbel
from vaelab.model.gumbel.model import GumbelSoftmaxVAE, gumbel_from_normal

__all__ = ["GumbelSoftmaxVAE", "build_gumbel", "gumbel_from_normal"]
