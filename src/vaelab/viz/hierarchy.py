"""Figures of a model with several stochastic layers (``can("layer_means")``): what each layer holds.

* ``top_fixed_samples.png``: one row per top-layer code z_L ~ p(z_L), the layers below redrawn from
  p(z_i | z_{i+1}) in every column: what varies along a row is what the lower layers decide;
* ``layer_reconstructions.png``: test images encoded up to layer i (its posterior mean) and decoded back
  down through the conditional means, one row per layer: how much of the image each layer keeps.

The model is asked only through the protocol: ``layer_means``, ``decode_from`` and ``latent_dim``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from matplotlib.figure import Figure

from vaelab.errors import VaelabError
from vaelab.model import LatentVariableModel
from vaelab.viz.figures import _as_float_images, _inference, _subplots, _tick_positions
from vaelab.viz.grid import image_grid


def top_fixed_samples(model: LatentVariableModel, rows: int = 8, columns: int = 10, seed: int = 0) -> Figure:
    """``rows`` top-layer codes from the prior, each decoded ``columns`` times with the lower layers redrawn."""
    if rows < 1 or columns < 1:
        raise VaelabError(f"top_fixed_samples needs rows and columns >= 1, got {rows} x {columns}")
    generator = torch.Generator().manual_seed(seed)
    with _inference(model) as device:
        z_top = torch.randn(rows, model.latent_dim, generator=generator).repeat_interleave(columns, 0)
        layers = len(model.layer_means(torch.zeros(1, *model.image_shape, device=device)))
        images = model.decode_from(z_top.to(device), layers, generator).cpu()
    fig, ax = _subplots(figsize=(0.6 * columns + 0.6, 0.6 * rows + 0.6))
    ax.imshow(image_grid(images, nrow=columns), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"Each row: one z_{layers} ~ p(z_{layers}); across it the layers below are redrawn", fontsize=9)
    fig.tight_layout()
    return fig


def layer_reconstructions(model: LatentVariableModel, x: torch.Tensor, n: int = 10) -> Figure:
    """The first ``n`` inputs (top row), then their reconstructions through layer 1, 2, .. L."""
    x = _as_float_images(x)[:n]
    if len(x) == 0:
        raise VaelabError("layer_reconstructions needs at least one image")
    with _inference(model) as device:
        means = model.layer_means(x.to(device))
        rows = [x] + [model.decode_from(z, i + 1).cpu() for i, z in enumerate(means)]
    _, _, height, _ = x.shape
    fig, ax = _subplots(figsize=(0.6 * len(x) + 1.2, 0.6 * len(rows) + 0.6))
    ax.imshow(image_grid(torch.cat(rows), nrow=len(x)), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks(_tick_positions(len(rows), height))
    ax.set_yticklabels(["input"] + [f"through z_{i + 1}" for i in range(len(means))], fontsize=8)
    ax.set_title("Reconstructions through each stochastic layer (posterior means, decoded by the means)", fontsize=9)
    fig.tight_layout()
    return fig


def hierarchy_figures(model: LatentVariableModel, x: torch.Tensor, seed: int = 0) -> Iterator[tuple[str, Figure]]:
    yield "top_fixed_samples.png", top_fixed_samples(model, seed=seed)
    yield "layer_reconstructions.png", layer_reconstructions(model, x)
