"""Figures for a latent space of any size: what each dimension does (traversals) and how the posterior
means spread (their first two principal components), where a 2-D slice shows only two of d dimensions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from vaelab.errors import VaelabError
from vaelab.model.base import LatentVariableModel
from vaelab.viz.figures import (
    ArrayLike,
    _check_means_labels,
    _legend,
    _numpy,
    _scatter_classes,
    _subplots,
    _tick_positions,
    decode_latents,
)
from vaelab.viz.grid import image_grid


def _centre_and_scale(model: LatentVariableModel, means: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Where a traversal starts and what one step is: the prior's mean and marginal standard deviations
    for a Gaussian prior; otherwise the posterior means' mean and standard deviation (or 0 and 1)."""
    prior = getattr(model, "prior", None)
    gaussian = prior.gaussian() if prior is not None and hasattr(prior, "gaussian") else None
    if gaussian is not None:
        loc, L = (t.detach().float().cpu() for t in gaussian)
        return loc, (L @ L.T).diagonal().sqrt(), "the prior's"
    if means is not None and len(means) > 1:
        m = torch.as_tensor(means, dtype=torch.float32)
        return m.mean(0), m.std(0).clamp_min(1e-3), "the posterior means'"
    return torch.zeros(model.latent_dim), torch.ones(model.latent_dim), "a unit"


def latent_traversals(
    model: LatentVariableModel, means: ArrayLike | None = None, steps: int = 9, span: float = 3.0, max_rows: int = 10
) -> Figure:
    """One row per latent dimension: the code moved along that dimension from -span to +span standard
    deviations (the prior's, where it is Gaussian) with the others at the centre, decoded. Given the
    posterior means of some data (N x d), the rows are the ``max_rows`` dimensions whose means vary most,
    most active first, each labelled with that variance (Cov_x(E_q[z_j]))."""
    d = model.latent_dim
    if steps < 2 or max_rows < 1:
        raise VaelabError(f"latent traversals need steps >= 2 and max_rows >= 1, got {steps} and {max_rows}")
    points = None if means is None else _numpy(means).astype(np.float64)
    if points is not None and (points.ndim != 2 or points.shape[1] != d):
        raise VaelabError(f"posterior means must be N x {d} for this model, got shape {points.shape}")
    variances = None if points is None or len(points) < 2 else points.var(0)
    order = list(range(d)) if variances is None else [int(j) for j in np.argsort(-variances, kind="stable")]
    rows = order[:max_rows]
    centre, scale, whose = _centre_and_scale(model, points)
    t = torch.linspace(-span, span, steps)
    z = centre.repeat(len(rows) * steps, 1)
    for r, j in enumerate(rows):
        z[r * steps : (r + 1) * steps, j] = centre[j] + t * scale[j]
    images = decode_latents(model, z)
    _, _, height, width = images.shape
    fig, ax = _subplots(figsize=(max(6.0, 0.75 * steps + 1.8), 0.75 * len(rows) + 1.3))
    ax.imshow(image_grid(images, nrow=steps), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(_tick_positions(steps, width))
    ax.set_xticklabels([f"{v:+.1f}σ" for v in t.tolist()], fontsize=7)
    ax.set_yticks(_tick_positions(len(rows), height))
    labels = [f"z[{j}]" + ("" if variances is None else f" ({variances[j]:.2g})") for j in rows]
    ax.set_yticklabels(labels, fontsize=8)
    title = f"Latent traversals: one dimension moved over ±{span:g} of {whose} standard deviations, the others at its centre"
    if variances is not None:
        shown = f"the {len(rows)} most active of {d}" if len(rows) < d else f"all {d}"
        title += f"\n{shown} dimensions, by the variance of their posterior means (in brackets)"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def latent_pca(means: ArrayLike, labels: ArrayLike, class_names: Sequence[str] | None = None) -> Figure:
    """The posterior means (N x d) projected on their first two principal components, coloured by class, on
    equal axes; each axis says what share of the means' variance it holds."""
    points, labels = _check_means_labels(means, labels, 2)
    centred = points - points.mean(0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    share = singular**2 / max(float((singular**2).sum()), 1e-300)
    projected = centred @ directions[:2].T
    fig, ax = _subplots(figsize=(8, 6.8))
    handles, texts = _scatter_classes(ax, projected, labels, class_names)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"principal component 1 ({100 * share[0]:.0f}% of the variance)")
    ax.set_ylabel(f"principal component 2 ({100 * share[1]:.0f}% of the variance)")
    ax.set_title(
        f"Latent means of the test set on their first two principal components\n"
        f"({points.shape[1]} dimensions; these two hold {100 * share[:2].sum():.0f}% of the means' variance)",
        fontsize=11,
    )
    ax.grid(alpha=0.3)
    _legend(fig, ax, handles, texts)
    fig.tight_layout()
    return fig
