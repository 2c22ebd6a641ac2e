"""Figures of a model whose code is quantised to a codebook (``can("code_usage")``: vqvae).

* ``code_usage.png``: how often each codebook vector is chosen over the test images' code grids, codes
  sorted from the most to the least used, with the usage's perplexity and the fraction of codes used.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from matplotlib.figure import Figure

from vaelab.errors import VaelabError
from vaelab.model import LatentVariableModel
from vaelab.model.codebook import usage_summary
from vaelab.viz.figures import BATCH, _as_float_images, _inference, _subplots


def code_counts(model: LatentVariableModel, x: torch.Tensor, batch_size: int = BATCH) -> torch.Tensor:
    """Times each code is chosen over the images ``x``, counted in batches."""
    x = _as_float_images(x)
    if len(x) == 0:
        raise VaelabError("the code usage needs at least one image")
    with _inference(model) as device:
        return sum(model.code_usage(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size))


def code_usage(model: LatentVariableModel, x: torch.Tensor) -> Figure:
    """Bar chart of the codes' usage over ``x``, most used first."""
    counts = code_counts(model, x)
    summary = usage_summary(counts)
    share = np.sort(counts.double().numpy())[::-1] / float(counts.sum())
    fig, ax = _subplots(figsize=(8, 3.6))
    ax.bar(np.arange(len(share)), 100 * share, width=1.0, color="C0")
    ax.set_xlim(-0.5, len(share) - 0.5)
    ax.set_xlabel("codes, most used first")
    ax.set_ylabel("% of the grid positions")
    ax.set_title(
        f"Code usage over {len(x)} test images: {summary['codes_used']} of {summary['codebook_size']} codes used, "
        f"perplexity {summary['code_perplexity']:.1f}",
        fontsize=10,
    )
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def codebook_figures(model: LatentVariableModel, x: torch.Tensor) -> Iterator[tuple[str, Figure]]:
    yield "code_usage.png", code_usage(model, x)
