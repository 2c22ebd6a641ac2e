"""What the latent space looks like, in numbers: active units, posterior collapse, kNN and linear
probes, cluster silhouette.

These go beyond what the seed study eyeballed in its scatter plots:

* active units (Burda et al. 2016): dimension j is active if Cov_x(E_q[z_j | x]) > 0.01;
* posterior collapse: every dimension's KL(q || p) averaged over the test set is below 0.01 nats,
  or no unit is active -- the encoder ignores the image and q(z|x) ~= p(z);
* kNN (k = 5) accuracy: a classifier fit on the training set's latent means, scored on the test
  set's (how well classes separate locally);
* logistic-regression (linear probe) accuracy: multinomial logistic regression on standardised
  latent means, fit on (at most) the first 10,000 training images, scored on the test set (how
  linearly the classes separate);
* silhouette score of the test-set latent means grouped by true class (how compact and separate
  the class clusters are; -1 to 1, higher is better).
"""

from __future__ import annotations

import numpy as np
import torch

from vaelab.data.batches import Batches
from vaelab.model.base import LatentVariableModel

ACTIVE_UNIT_THRESHOLD = 0.01
COLLAPSE_KL_THRESHOLD = 0.01  # nats per dimension
PROBE_TRAIN_LIMIT = 10_000


@torch.no_grad()
def latent_means(model: LatentVariableModel, batches: Batches) -> torch.Tensor:
    """E_q[z | x] for every image of ``batches``, in order (E_q[z | x, y] for a conditional family)."""
    model.eval()
    if model.takes_labels:
        return torch.cat([model.condition(b.y).encode(b.x) for b in batches.batches(shuffle=False)])
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


def logistic_probe_accuracy(
    train_means: torch.Tensor,
    train_labels: torch.Tensor,
    test_means: torch.Tensor,
    test_labels: torch.Tensor,
    limit: int = PROBE_TRAIN_LIMIT,
) -> float:
    """Test accuracy of a logistic regression fit on the first ``limit`` training latent means (0 = all)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if limit:
        train_means, train_labels = train_means[:limit], train_labels[:limit]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with warnings.catch_warnings():
        # lbfgs at max_iter on near-separable classes: the accuracy has settled long before
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_means.double().numpy(), train_labels.numpy())
    return float(probe.score(test_means.double().numpy(), test_labels.numpy()))


def posterior_collapse(
    active: int,
    kl_per_dim: list[float] | None = None,
    kl: float | None = None,
    latent_dim: int = 1,
    threshold: float = COLLAPSE_KL_THRESHOLD,
) -> bool:
    """True when all KL terms are near zero: no active unit, or every dimension's test-set mean KL is
    below ``threshold`` nats (where the KL does not factorise: the total KL below ``threshold * latent_dim``)."""
    if active == 0:
        return True
    if kl_per_dim is not None:
        return all(value < threshold for value in kl_per_dim)
    return kl is not None and kl < threshold * latent_dim


def silhouette(means: torch.Tensor, labels: torch.Tensor) -> float:
    """Silhouette of the classes; NaN where it is undefined (fewer than 2 classes, or a class per image)."""
    from sklearn.metrics import silhouette_score

    classes = len(torch.unique(labels))
    if not 2 <= classes <= len(labels) - 1:
        return float("nan")
    return float(silhouette_score(means.numpy().astype(np.float64), labels.numpy()))


def latent_analysis(
    model: LatentVariableModel, train: Batches, test: Batches, k: int = 5
) -> dict[str, float | int | list[float]]:
    """Active units, kNN accuracy and silhouette of one model, from its train and test latent means."""
    train_means, test_means = latent_means(model, train), latent_means(model, test)
    count, variances = active_units(test_means)
    return {
        "active_units": count,
        "latent_variance": variances,
        f"knn{k}_accuracy": knn_accuracy(train_means, train.labels, test_means, test.labels, k),
        "silhouette": silhouette(test_means, test.labels),
    }
