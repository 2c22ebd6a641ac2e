"""The hierarchical family (``model.family = hierarchical``): several stochastic layers, bottom-up or ladder inference."""

from vaelab.model.hierarchical.build import build_hierarchical
from vaelab.model.hierarchical.model import HierarchicalVAE

__all__ = ["HierarchicalVAE", "build_hierarchical"]
