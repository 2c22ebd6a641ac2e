"""Tiling a batch of images into one array (what torchvision's ``make_grid`` does, without torchvision)."""

from __future__ import annotations

import math

import numpy as np
import torch

from vaelab.errors import VaelabError


def _as_float_nchw(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """N x C x H x W float32 in [0, 1]-ish; accepts N x H x W, uint8 (divided by 255) or float."""
    if isinstance(images, torch.Tensor):
        array = images.detach().cpu().numpy()
    else:
        array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise VaelabError(f"images must be N x C x H x W or N x H x W, got shape {array.shape}")
    if array.shape[1] not in (1, 3):
        raise VaelabError(f"images must have 1 or 3 channels, got {array.shape[1]} (shape {array.shape})")
    if array.shape[0] == 0:
        raise VaelabError("no images to tile: the batch is empty")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32, copy=False)


def tile_origin(index: int, nrow: int, height: int, width: int, padding: int = 2) -> tuple[int, int]:
    """Top-left pixel (row, col) of tile ``index`` in a grid made by :func:`image_grid`."""
    r, c = divmod(index, nrow)
    return padding + r * (height + padding), padding + c * (width + padding)


def image_grid(
    images: torch.Tensor | np.ndarray,
    nrow: int,
    padding: int = 2,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Tile ``images`` row by row, ``nrow`` images per row, with ``padding`` pixels around each.

    Returns a float32 array of shape (H', W') for one channel or (H', W', 3) for three, with
    H' = rows * (H + padding) + padding and W' = nrow * (W + padding) + padding (as ``make_grid``).
    Image ``i`` sits at row ``i // nrow``, column ``i % nrow``; unused cells keep ``pad_value``.
    """
    if nrow < 1:
        raise VaelabError(f"nrow must be >= 1, got {nrow}")
    array = _as_float_nchw(images)
    n, channels, height, width = array.shape
    ncol = min(nrow, n)
    rows = math.ceil(n / nrow)
    grid = np.full(
        (channels, rows * (height + padding) + padding, ncol * (width + padding) + padding),
        pad_value,
        dtype=np.float32,
    )
    for i in range(n):
        top, left = tile_origin(i, nrow, height, width, padding)
        grid[:, top : top + height, left : left + width] = array[i]
    if channels == 1:
        return grid[0]
    return np.ascontiguousarray(grid.transpose(1, 2, 0))


def save_image_grid(
    images: torch.Tensor | np.ndarray, path, nrow: int | None = None, scale: int = 1, dpi: int = 100
) -> None:
    """Write the tiled images in the format the path's suffix names (png, svg or pdf), each image pixel as
    ``scale`` x ``scale`` screen pixels (nearest neighbour: no blur), no axes."""
    from pathlib import Path

    from matplotlib.image import imsave

    from vaelab.errors import VaelabError
    from vaelab.io import atomic_write

    path = Path(path)
    kind = path.suffix.lstrip(".").lower()
    if kind not in ("png", "svg", "pdf"):
        raise VaelabError(f"{path}: an image grid is written as .png, .svg or .pdf, not {path.suffix or 'no suffix'}")
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 32:
        raise VaelabError(
            f"the grid's scale must be a whole number from 1 to 32 (pixels per image pixel), got {scale!r}"
        )
    n = len(images)
    grid = image_grid(images, nrow or max(1, math.ceil(math.sqrt(n))))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    cmap = "gray" if grid.ndim == 2 else None
    atomic_write(path, lambda tmp: imsave(tmp, grid.clip(0, 1), cmap=cmap, vmin=0, vmax=1, format=kind, dpi=dpi))
