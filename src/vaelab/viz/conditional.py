"""Figures of a model that decodes under a discrete value (``can("condition")``): samples per value, style transfer.

* ``class_samples.png``: one row per class, prior draws decoded under that class's label;
* ``style_transfer.png``: test digits encoded with their own label (z = E_q[z | x, y]), each decoded
  under every label: the code keeps the style (slant, stroke), the label picks the class.

Every model is asked only through the protocol: ``condition(labels)`` and the plain encode / decode /
sample of what it returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from vaelab.errors import VaelabError
from vaelab.model import LatentVariableModel
from vaelab.viz.figures import (
    BATCH,
    _as_float_images,
    _inference,
    _prior_drawing,
    _subplots,
    _tick_positions,
    latent_scatter,
    latent_scatter_3d,
    prior_samples,
    reconstructions,
)
from vaelab.viz.grid import image_grid


def _names(model: LatentVariableModel, class_names: Sequence[str] | None) -> list[str]:
    names = list(class_names or [])
    return [names[c] if c < len(names) else str(c) for c in range(model.classes)]


def class_samples(
    model: LatentVariableModel, per_class: int = 10, seed: int = 0, class_names: Sequence[str] | None = None
) -> Figure:
    """One row per class: ``per_class`` prior draws decoded under that class's label (seeded)."""
    if per_class < 1:
        raise VaelabError(f"class_samples needs per_class >= 1, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(model.classes).repeat_interleave(per_class)
    with _inference(model):
        images = model.condition(labels).sample(len(labels), generator=generator).cpu()
    _, _, height, _ = images.shape
    fig, ax = _subplots(figsize=(0.6 * per_class + 1.0, 0.6 * model.classes + 0.6))
    ax.imshow(image_grid(images, nrow=per_class), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks(_tick_positions(model.classes, height))
    ax.set_yticklabels(_names(model, class_names), fontsize=8)
    name = getattr(model, "condition_name", "label")
    ax.set_ylabel(name)
    ax.set_title(f"Samples z ~ p(z), decoded under each {name} (seed {seed})", fontsize=10)
    fig.tight_layout()
    return fig


def style_transfer(
    model: LatentVariableModel,
    x: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    n: int = 8,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """The first ``n`` images (left column) encoded under their own labels, decoded under every label."""
    x = _as_float_images(x)[:n]
    labels = torch.as_tensor(np.asarray(labels)).reshape(-1)[: len(x)]
    if len(x) == 0:
        raise VaelabError("style_transfer needs at least one image")
    view = _view(model, x, labels)
    with _inference(model) as device:
        z = view.encode(x.to(device))
        columns = [model.condition(c).decode(z).cpu() for c in range(model.classes)]
    rows = torch.stack([x, *columns], 1).flatten(0, 1)  # image i: its input, then one decode per label
    _, _, height, width = x.shape
    fig, ax = _subplots(figsize=(0.6 * (model.classes + 1) + 1.0, 0.6 * len(x) + 0.8))
    ax.imshow(image_grid(rows, nrow=model.classes + 1), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(_tick_positions(model.classes + 1, width))
    ax.set_xticklabels(["input", *_names(model, class_names)], fontsize=8)
    ax.set_yticks([])
    name = getattr(model, "condition_name", "label")
    ax.set_title(f"Style transfer: each input's posterior mean, decoded under every {name}", fontsize=10)
    fig.tight_layout()
    return fig


def _view(model: LatentVariableModel, x: torch.Tensor, labels: torch.Tensor) -> LatentVariableModel:
    """The model with the values these images decode under: their labels (a conditional family), or
    their most probable category (a discrete latent)."""
    if model.takes_labels:
        return model.condition(labels)
    if model.can("discrete_code"):
        with _inference(model) as device:
            return model.condition(model.discrete_code(x.to(device)).cpu())
    return model


def encode_means_conditioned(
    model: LatentVariableModel, x: torch.Tensor, labels: torch.Tensor, batch_size: int = BATCH
) -> torch.Tensor:
    """Posterior means for images ``x`` (under their ``labels`` where the model takes them), in batches; on CPU."""
    with _inference(model) as device:
        parts = [
            _view(model, x[i : i + batch_size], labels[i : i + batch_size]).encode(x[i : i + batch_size].to(device))
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(parts).cpu()


def conditional_figures(
    model: LatentVariableModel,
    x: torch.Tensor,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    seed: int = 0,
) -> Iterator[tuple[str, Figure]]:
    """(file name, figure) for every figure of a model that decodes under a discrete value: samples, samples
    per value, and with the test labels: reconstructions, style transfer and, for 2 or 3 latent
    dimensions, the scatter of the posterior means (what the code holds besides the value)."""
    names = class_names if model.takes_labels else None  # a discrete latent's categories are not the classes
    yield "samples.png", prior_samples(model, n=100, seed=seed)
    yield "class_samples.png", class_samples(model, seed=seed, class_names=names)
    if labels is None:
        return  # a conditional model encodes only under a label
    y = torch.as_tensor(labels).long()
    yield "reconstructions.png", reconstructions(_view(model, x[:10], y[:10]), x[:10], n=10)
    yield "style_transfer.png", style_transfer(model, x, y, class_names=names)
    d = model.latent_dim
    if d in (2, 3):
        means = encode_means_conditioned(model, x, y)
        if d == 2:
            yield "latent_scatter.png", latent_scatter(means, labels, class_names, **_prior_drawing(model))
        else:
            yield "latent_scatter_3d.png", latent_scatter_3d(means, labels, class_names)
