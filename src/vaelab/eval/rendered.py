"""A model of dSprites measured on images drawn from their factors (:class:`RenderedSprites`), not on the
made table: seconds instead of making 2.9 GB, and the same images (both come from ``Variant.draw``).

This is what a shipped model of dSprites records as its ``check`` and what the tests repeat."""

from __future__ import annotations

from typing import Any

import numpy as np

from vaelab.config import RunConfig
from vaelab.data import Batches
from vaelab.data.dsprites import VARIANTS, RenderedSprites
from vaelab.eval.bound import evaluate_elbo
from vaelab.eval.disentanglement import METRICS, Sizes, all_metrics
from vaelab.eval.factor_eval import representation
from vaelab.model.base import LatentVariableModel

CHECK_IMAGES = 1000
# MIG's 10,000 codes as at full size (so the check's MIG is comparable); the rest small: ~22,000 images in all
CHECK_SIZES = Sizes(10_000, 2_000, 100, 50, 100, 50, 2_000, 16)


def rendered_check(
    model: LatentVariableModel, config: RunConfig, images: int = CHECK_IMAGES, sizes: Sizes = CHECK_SIZES
) -> dict[str, Any]:
    """-ELBO of ``images`` images with uniformly drawn factors (from all combinations: not a held-out split),
    and the five metrics at ``sizes`` (seed 0)."""
    truth = RenderedSprites(VARIANTS[config.data.name])
    drawn = truth.observations(truth.sample_factors(images, np.random.default_rng(0)))
    batches = Batches(drawn, batch_size=config.train.eval_batch_size, binarize=config.data.binarize, training=False)
    metrics = all_metrics(truth, representation(model), seed=0, sizes=sizes)
    return {
        "images": images,
        "elbo": evaluate_elbo(model, batches, seed=0),
        "metric_sizes": dict(vars(sizes)),
        **{key: metrics[key] for key in METRICS},
    }


__all__ = ["CHECK_IMAGES", "CHECK_SIZES", "rendered_check"]
