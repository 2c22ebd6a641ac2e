"""Ground-truth factors: images indexed by the factor values that made them.

A data set made from known factors of variation (dSprites: shape, scale, orientation, x, y) holds
every combination of their values exactly once. :class:`FactorImages` is that table seen from the
factors' side: draw factor classes, get the images that have them. It is what the disentanglement
metrics sample from (``sample_factors`` then ``observations``), as disentanglement_lib's
``GroundTruthData`` is; :class:`FactorGrid` is its factor side alone, which ``RenderedSprites`` (dSprites
drawn on demand) shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vaelab.errors import VaelabError


@dataclass(frozen=True)
class Factor:
    """One factor of variation: its name and the value each of its classes stands for."""

    name: str
    values: tuple[float | str, ...]

    @property
    def size(self) -> int:
        return len(self.values)


class FactorGrid:
    """Every combination of some factors' classes, drawn uniformly: what a disentanglement metric samples."""

    factors: tuple[Factor, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(f.size for f in self.factors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.factors)

    @property
    def num_factors(self) -> int:
        return len(self.factors)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` x K classes, each factor uniform and independent (so each image equally likely)."""
        return np.stack([rng.integers(0, size, n) for size in self.sizes], axis=1)

    def observations(self, classes: np.ndarray) -> torch.Tensor:
        """The uint8 images with the factor classes ``classes`` (n x K), in that order."""
        raise NotImplementedError


class FactorImages(FactorGrid):
    """Images holding every combination of the factors' classes once, found by their classes.

    ``images`` is N x C x H x W uint8 (in memory or a view of a memory map), ``classes`` N x K integers
    with ``classes[i, k]`` the class of factor k in image i; N must be the product of the factor sizes.
    """

    def __init__(self, factors: tuple[Factor, ...], images: torch.Tensor, classes: np.ndarray) -> None:
        self.factors = tuple(factors)
        self.images = images
        sizes = self.sizes
        classes = np.asarray(classes)
        if classes.ndim != 2 or classes.shape[1] != len(sizes) or len(classes) != len(images):
            raise VaelabError(
                f"factor classes of shape {classes.shape} do not match {len(images)} images and {len(sizes)} factors"
            )
        if len(images) != math.prod(sizes):
            raise VaelabError(
                f"{len(images)} images cannot hold every combination of factors of sizes {sizes} "
                f"({math.prod(sizes)}) exactly once"
            )
        if classes.size and (classes.min() < 0 or (classes >= np.asarray(sizes)).any()):
            raise VaelabError(f"factor classes outside 0 .. size - 1 for factors of sizes {sizes}")
        flat = np.ravel_multi_index(tuple(classes.T.astype(np.int64)), sizes)
        self._row_of = np.full(len(images), -1, dtype=np.int64)  # combination -> row of `images`
        self._row_of[flat] = np.arange(len(images))
        if (self._row_of < 0).any():
            raise VaelabError(f"the factor classes repeat a combination: not every one of {sizes} appears once")

    def rows(self, classes: np.ndarray) -> np.ndarray:
        """The rows of ``images`` holding the combinations ``classes`` (n x K)."""
        return self._row_of[np.ravel_multi_index(tuple(np.asarray(classes).T), self.sizes)]

    def observations(self, classes: np.ndarray) -> torch.Tensor:
        """The uint8 images with the factor classes ``classes`` (n x K), in that order."""
        return self.images[torch.from_numpy(self.rows(classes))]


__all__ = ["Factor", "FactorGrid", "FactorImages"]
