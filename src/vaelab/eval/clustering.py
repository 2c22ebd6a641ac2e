"""Unsupervised accuracy of a discrete code: the share of images whose code, under the best one-to-one
matching of codes to classes, names their class (as JointVAE, Dupont 2018, and clustering papers report it).

The matching is the assignment maximising the agreements, found by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the codes-by-classes contingency table. With more codes
than classes the unmatched codes count as wrong.
"""

from __future__ import annotations

import numpy as np
import torch

from vaelab.data.batches import Batches
from vaelab.model.base import LatentVariableModel


def best_match_accuracy(codes: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Accuracy of ``codes`` against ``labels`` (non-negative integers, same length) under the best matching."""
    from scipy.optimize import linear_sum_assignment

    codes, labels = np.asarray(codes).reshape(-1), np.asarray(labels).reshape(-1)
    if len(codes) != len(labels) or not len(codes):
        raise ValueError(f"{len(codes)} codes and {len(labels)} labels: need as many, at least one")
    table = np.zeros((codes.max() + 1, labels.max() + 1), dtype=np.int64)
    np.add.at(table, (codes, labels), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(codes))


@torch.no_grad()
def discrete_codes(model: LatentVariableModel, batches: Batches) -> torch.Tensor:
    """The model's most probable category for every image of ``batches``, in order."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.discrete_code(x.to(device)).cpu() for x in batches.epoch(shuffle=False)])
