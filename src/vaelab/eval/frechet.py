"""A Fréchet distance between a model's samples and the test set, in a small classifier's feature space.

    FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

between Gaussians fitted (mean, covariance) to two sets of features. The features are the 128-d
penultimate layer of vaelab's own small classifier of the model's data set (:mod:`vaelab.eval.classifier`:
MNIST's digits or Fashion-MNIST's clothes), so

**this number is NOT comparable with Inception-based FID** (Heusel et al. 2017), with any number
computed with another feature network, or across data sets: use it to compare vaelab models of one
data set with each other (on a data set without a classifier it is not computed).

The model's samples are the likelihood's mean images decoded from ``n`` prior draws (what
``vaelab sample`` shows); the reference is the test images as grey levels in [0, 1], whatever
binarisation the model was trained with. With few reference images (a ``--limit``ed test set) the
covariance estimate is poor and the distance biased upwards: compare numbers of equal sample sizes.

The trace term is computed through the symmetric route: Tr((S1 S2)^{1/2}) equals the sum of the
square roots of the eigenvalues of S1^{1/2} S2 S1^{1/2}, a symmetric positive semi-definite matrix,
so the computation needs only ``numpy.linalg.eigh``, yields no complex parts (``scipy.linalg.sqrtm``
of the non-symmetric S1 S2 can) and stays accurate for singular covariances. The tests check it
against the closed form for diagonal covariances and against ``scipy.linalg.sqrtm``.
"""

from __future__ import annotations

import numpy as np
import torch

from vaelab.errors import VaelabError
from vaelab.model.base import LatentVariableModel


def not_fid_note(dataset: str = "mnist") -> str:
    return (
        f"Fréchet distance in the feature space of vaelab's own {dataset} classifier (128-d); "
        "NOT comparable with Inception-based FID"
    )


SAMPLE_CHUNK = 1000  # prior samples decoded per call: the conv decoder's activations stay ~100 MB


def gaussian_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d) and unbiased covariance (d x d) of N x d features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise VaelabError(f"need at least 2 feature vectors (N x d) for a covariance, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Symmetric, zero for equal Gaussians, and never negative (rounding below zero is clipped to 0).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = len(mu1)
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise VaelabError(
            f"Fréchet distance: shapes do not match (means {mu1.shape}, {mu2.shape}; "
            f"covariances {sigma1.shape}, {sigma2.shape})"
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)
    return max(distance, 0.0)


def frechet_distance_of_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two N x d feature sets."""
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


@torch.no_grad()
def prior_samples(model: LatentVariableModel, n: int, seed: int = 0, chunk: int = SAMPLE_CHUNK) -> torch.Tensor:
    """Mean images decoded from ``n`` prior draws, ``chunk`` at a time (deterministic for a seed)."""
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([model.sample(min(chunk, n - i), generator=generator).cpu() for i in range(0, n, chunk)])
    finally:
        model.train(was_training)


def sample_frechet_distance(
    model: LatentVariableModel,
    reference_images: torch.Tensor,
    n: int = 10_000,
    seed: int = 0,
    classifier=None,
    *,
    dataset: str,
) -> dict[str, float | int | str]:
    """Fréchet distance between ``n`` prior samples of ``model`` and ``reference_images`` (``dataset``'s test
    images, uint8 or [0, 1] floats), in ``dataset``'s classifier's feature space; see the module docstring."""
    from vaelab.eval.classifier import features, load_classifier

    classifier = classifier or load_classifier(dataset)
    samples = prior_samples(model, n, seed)
    distance = frechet_distance_of_features(features(classifier, samples), features(classifier, reference_images))
    return {
        "frechet_distance": distance,
        "frechet_samples": n,
        "frechet_reference_images": len(reference_images),
        "frechet_note": not_fid_note(dataset),
    }
