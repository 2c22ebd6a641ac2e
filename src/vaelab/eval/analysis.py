"""What the latent space looks like, in numbers: active units, kNN probe, cluster silhouette.

These go beyond what the seed study eyeballed in its scatter plots:

* active units (Burda et al. 2016): dimension j is active if Cov_x(E_q[z_j | x]) > 0.01;
* kNN (k = 5) accuracy: a classifier fit on the training set's latent means, scored on the test
  set's (how well classes separate locally);
* silhouette score of the test-set latent means grouped by true class (how compact and separate
  the class clusters are; -1 to 1, higher is better).
"""

from __future__ import annotations

import numpy as np
import torch

from vaelab.data.batches import Batches
from vaelab.model.vae import VAE

ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def latent_means(model: VAE, batches: Batches) -> torch.Tensor:
    """E_q[z | x] for every image of ``batches``, in order."""
    model.eval()
    return torch.cat([model.encode(x) for x in batches.epoch(shuffle=False)])


def active_units(means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, list[float]]:
    """(number of active dimensions, Cov_x(E_q[z_j]) per dimension)."""
    variances = means.double().var(dim=0, unbiased=True)
    return int((variances > threshold).sum()), variances.tolist()


def knn_accuracy(
    train_means: torch.Tensor,
    train_labels: torch.Tensor,
    test_means: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 5,
) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    classifier = KNeighborsClassifier(n_neighbors=k).fit(train_means.numpy(), train_labels.numpy())
    return float(classifier.score(test_means.numpy(), test_labels.numpy()))


def silhouette(means: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(means.numpy().astype(np.float64), labels.numpy()))


def latent_analysis(model: VAE, train: Batches, test: Batches, k: int = 5) -> dict[str, float | int | list[float]]:
    """Active units, kNN accuracy and silhouette of one model, from its train and test latent means."""
    train_means, test_means = latent_means(model, train), latent_means(model, test)
    count, variances = active_units(test_means)
    return {
        "active_units": count,
        "latent_variance": variances,
        f"knn{k}_accuracy": knn_accuracy(train_means, train.labels, test_means, test.labels, k),
        "silhouette": silhouette(test_means, test.labels),
    }
