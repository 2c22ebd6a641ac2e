"""Figures of a model trained on a data set with factors: latent traversals and the factor x latent
mutual information.

* ``latent_traversals.png``: one row per latent dimension; an image's posterior mean with that one
  dimension swept over [-span, span], decoded. Each row is named after the factor it holds most of
  (the normalised mutual information I(z_j; v_k) / H(v_k), given by the caller);
* ``factor_latent_mi.png``: that normalised mutual information as a heat map, latents x factors;
* ``reconstructions.png``: as for every model (:func:`vaelab.viz.figures.reconstructions`).

The mutual information is an argument: it is computed by ``vaelab.eval`` (which this layer does not import).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from vaelab.errors import VaelabError
from vaelab.model import LatentVariableModel
from vaelab.viz.figures import (
    FigureFormat,
    _as_float_images,
    _subplots,
    decode_latents,
    encode_means,
    reconstructions,
    save_figure,
)
from vaelab.viz.grid import image_grid

NO_FACTOR = 0.05  # below this share of any factor's entropy a dimension is shown as holding none


def factor_of_dimension(information: np.ndarray, factor_names: Sequence[str]) -> list[str]:
    """Per latent dimension: the factor it holds most of and that share, or that it holds none."""
    names = []
    for row in np.asarray(information):
        k = int(np.argmax(row))
        names.append(f"{factor_names[k]} ({row[k]:.2f})" if row[k] >= NO_FACTOR else "no factor")
    return names


def _check(information: np.ndarray, factor_names: Sequence[str], latent_dim: int) -> np.ndarray:
    information = np.asarray(information, dtype=float)
    if information.shape != (latent_dim, len(factor_names)):
        raise VaelabError(
            f"the mutual information is {information.shape}; expected latent_dim x factors = "
            f"({latent_dim}, {len(factor_names)})"
        )
    return information


def latent_traversals(
    model: LatentVariableModel,
    image: torch.Tensor,
    information: np.ndarray,
    factor_names: Sequence[str],
    steps: int = 9,
    span: float = 2.5,
) -> Figure:
    """Decoded sweeps of each latent dimension from ``image``'s posterior mean, one row per dimension."""
    d = model.latent_dim
    information = _check(information, factor_names, d)
    if steps < 2 or not span > 0:
        raise VaelabError(f"a traversal needs steps >= 2 and span > 0, got {steps} and {span}")
    x = _as_float_images(image)
    x = x[None] if x.dim() == 3 else x[:1]
    base = encode_means(model, x)[0]
    values = torch.linspace(-span, span, steps)
    z = base.repeat(d * steps, 1)
    for j in range(d):
        z[j * steps : (j + 1) * steps, j] = values
    decoded = decode_latents(model, z)
    tiles = torch.cat([x.expand(d, -1, -1, -1)[:, None], decoded.view(d, steps, *decoded.shape[1:])], dim=1)
    _, _, height, width = decoded.shape
    fig, ax = _subplots(figsize=(1.0 + 0.75 * (steps + 1), 0.5 + 0.72 * d))
    ax.imshow(image_grid(tiles.reshape(-1, *tiles.shape[2:]), nrow=steps + 1), cmap="gray", vmin=0, vmax=1)
    pitch = height + 2
    ax.set_yticks([2 + pitch * j + height / 2 for j in range(d)])
    labels = factor_of_dimension(information, factor_names)
    ax.set_yticklabels([f"z{j}: {label}" for j, label in enumerate(labels)], fontsize=8)
    ax.set_xticks([2 + (width + 2) * i + width / 2 for i in range(steps + 1)])
    ax.set_xticklabels(["input"] + [f"{v:.1f}" for v in values.tolist()], fontsize=7)
    ax.set_title(
        f"Latent traversals: z_j from {-span:g} to {span:g}, the other dimensions at the input's posterior mean;\n"
        "each row named after the factor it holds most of (I(z_j; v_k) / H(v_k))",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def mutual_information_map(information: np.ndarray, factor_names: Sequence[str]) -> Figure:
    """Heat map of I(z_j; v_k) / H(v_k): latent dimensions down, factors across."""
    information = np.asarray(information, dtype=float)
    d, k = information.shape
    fig, ax = _subplots(figsize=(1.6 + 1.1 * k, 1.0 + 0.42 * d))
    shown = ax.imshow(information, cmap="viridis", vmin=0.0, vmax=max(1.0, float(information.max())), aspect="auto")
    for j in range(d):
        for f in range(k):
            value = information[j, f]
            ax.text(
                f, j, f"{value:.2f}", ha="center", va="center", fontsize=7, color="black" if value > 0.6 else "white"
            )
    ax.set_xticks(range(k))
    ax.set_xticklabels(factor_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(d))
    ax.set_yticklabels([f"z{j}" for j in range(d)], fontsize=8)
    fig.colorbar(shown, ax=ax, fraction=0.05)
    ax.set_title("Mutual information I(z_j; v_k) / H(v_k)", fontsize=10)
    fig.tight_layout()
    return fig


def write_disentanglement_figures(
    model: LatentVariableModel,
    figures_dir: Path | str,
    images: torch.Tensor,
    information: np.ndarray,
    factor_names: Sequence[str],
    with_reconstructions: bool = True,
    figure_format: FigureFormat | None = None,
) -> list[Path]:
    """latent_traversals, factor_latent_mi and reconstructions (of ``images``; left out with
    ``with_reconstructions=False``, where the run's figures have it already), as ``figure_format``'s files
    (default PNG at 110 dpi); the traversals start from the first of ``images``."""
    fmt = figure_format or FigureFormat()
    figures_dir = Path(figures_dir)
    if len(images) == 0:
        raise VaelabError("the disentanglement figures need at least one image")

    def save(fig, name: str) -> Path:
        return save_figure(fig, figures_dir / fmt.file_name(name), dpi=fmt.dpi)

    paths = [
        save(latent_traversals(model, images[0], information, factor_names), "latent_traversals.png"),
        save(mutual_information_map(information, factor_names), "factor_latent_mi.png"),
    ]
    if with_reconstructions:
        paths.append(save(reconstructions(model, images, n=10), "reconstructions.png"))
    return paths


__all__ = ["factor_of_dimension", "latent_traversals", "mutual_information_map", "write_disentanglement_figures"]
