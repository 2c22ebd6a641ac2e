"""Batches built by indexing uint8 tensors held in memory, converted to float one batch at a time.

No per-sample ``Dataset``: a batch is ``x[idx]`` (one gather) then ``/ 255`` (one pass), which is
what keeps the data path off the profile. Binarisation follows the literature:

* ``none``: grey levels in [0, 1] used directly as Bernoulli targets (the study's convention);
* ``dynamic``: a fresh Bernoulli(x) sample for every training batch, while validation and test
  images are binarised once with a fixed seed (Burda et al. 2016), so evaluations are comparable;
* ``static``: every split binarised once with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

FIXED_BINARIZATION_SEED = 1234


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def binarize_fixed(x: torch.Tensor, seed: int = FIXED_BINARIZATION_SEED, chunk: int = 10_000) -> torch.Tensor:
    """A Bernoulli sample of uint8 images with a fixed seed, returned as uint8 0/255.

    Drawn ``chunk`` images at a time (the draws do not depend on the chunking), so no float copy of a
    whole split is ever made.
    """
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(x.shape, dtype=torch.uint8)
    for start in range(0, len(x), chunk):
        sample = torch.bernoulli(to_unit_float(x[start : start + chunk]), generator=generator)
        out[start : start + chunk] = sample.to(torch.uint8).mul_(255)
    return out


@dataclass(frozen=True)
class Batch:
    """One batch: images in [0, 1] and, where the data set has them, their labels and factor classes (B x K)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    factors: torch.Tensor | None = None


def _rows_of(index: torch.Tensor | slice, rows: tuple[int, int]) -> torch.Tensor | slice:
    lo, hi = rows
    if isinstance(index, slice):
        return slice(index.start + lo, index.start + hi)
    return index[lo:hi]


class Batches:
    """Shuffled (or ordered) float batches of one split, with the split's binarisation applied."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        batch_size: int = 128,
        binarize: str = "none",
        training: bool = True,
        factors: torch.Tensor | None = None,
    ) -> None:
        self.binarize_each_batch = binarize == "dynamic" and training
        if binarize == "static" or (binarize == "dynamic" and not training):
            images = binarize_fixed(images)
        self.images = images
        self.labels = labels
        self.factors = factors
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def mean_image(self, chunk: int = 10_000) -> torch.Tensor:
        """The mean training target, C x H x W in [0, 1]: the mean binarised image for ``static``;
        the mean grey level for ``none`` and for ``dynamic`` (a Bernoulli(x) draw has mean x).
        Summed ``chunk`` images at a time in float64, so no float copy of the split is made."""
        total = torch.zeros(self.images.shape[1:], dtype=torch.float64)
        for start in range(0, len(self.images), chunk):
            total += self.images[start : start + chunk].to(torch.float64).sum(0)
        return (total / (255.0 * max(len(self.images), 1))).float()

    def batch_sizes(self) -> list[int]:
        """The size of every batch of an epoch, in order (the last may be smaller)."""
        n = len(self.images)
        return [min(self.batch_size, n - start) for start in range(0, n, self.batch_size)]

    def epoch(
        self,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        rows: Callable[[int], tuple[int, int]] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Float batches in [0, 1]; the generator drives the shuffle and the dynamic binarisation.

        ``rows(n)`` (data-parallel training) gives the rows ``start:stop`` of each batch of ``n``
        images that this process keeps: the batches are drawn exactly as without it (same shuffle,
        same binarisation noise), then sliced.
        """
        for batch in self.batches(generator, shuffle, rows):
            yield batch.x

    def batches(
        self,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        rows: Callable[[int], tuple[int, int]] | None = None,
    ) -> Iterator[Batch]:
        """As :meth:`epoch`, each batch with its labels and factors (None where the split has none)."""
        n = len(self.images)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            index = order[start:stop] if order is not None else slice(start, stop)
            kept = index if rows is None else _rows_of(index, rows(stop - start))  # this process's rows
            if self.binarize_each_batch:
                # the noise is drawn for the whole batch, so every process's generator stays in step
                x = torch.bernoulli(to_unit_float(self.images[index]), generator=generator)
                if rows is not None:
                    x = x[_rows_of(slice(0, stop - start), rows(stop - start))]
            else:
                x = to_unit_float(self.images[kept])
            yield Batch(
                x,
                None if self.labels is None else self.labels[kept],
                None if self.factors is None else self.factors[kept],
            )

    def labelled(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Ordered (x, y) batches, for evaluation."""
        assert self.labels is not None
        for start, x in zip(range(0, len(self.images), self.batch_size), self.epoch(shuffle=False)):
            yield x, self.labels[start : start + self.batch_size]
