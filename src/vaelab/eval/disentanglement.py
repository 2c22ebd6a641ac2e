"""Disentanglement metrics as functions of codes and ground-truth factors (numpy and scikit-learn only).

Codes are N x d (one row per observation: the representation, e.g. posterior means), factors N x K
integer classes. Each metric follows disentanglement_lib (Locatello et al. 2019), whose choices are
the defaults here; docs/disentanglement.md writes them down with the papers' definitions.

* :func:`mig` — Mutual Information Gap (Chen et al. 2018): codes discretised into 20-bin histograms,
  I(z_j; v_k) by counting, and for each factor the gap between the two most informative dimensions
  divided by H(v_k), averaged over factors.
* :func:`sap` — Separated Attribute Predictability (Kumar et al. 2018): for every (dimension,
  factor) the test accuracy of a linear SVM (C = 0.01, balanced classes) predicting the factor from
  that one dimension; per factor the gap between the best two, averaged.
* :func:`dci` — Disentanglement, Completeness, Informativeness (Eastwood & Williams 2018): one
  gradient-boosted tree classifier per factor on all dimensions; its feature importances R (d x K)
  give D = sum_j rho_j (1 - H_K(P_j.)) and C = sum_k rho_k (1 - H_d(P_.k)); informativeness is the
  classifiers' mean test accuracy.
* :func:`beta_vae_score` — Higgins et al. 2017: pairs of batches sharing one factor, the mean
  |z1 - z2| over a batch as the feature, a logistic regression predicts which factor was shared.
* :func:`factor_vae_score` — Kim & Mnih 2018: a batch with one factor fixed, codes divided by their
  global standard deviation, the dimension of least variance votes for the factor; the accuracy of
  the majority-vote classifier.

The last two draw their own observations: they take a ground truth (anything with ``sizes``,
``sample_factors(n, rng)`` and ``observations(classes)``, as :class:`vaelab.data.FactorImages` or
:class:`vaelab.data.dsprites.RenderedSprites`) and a
representation function from observations to N x d codes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.stats
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC

from vaelab.errors import VaelabError

BINS = 20  # disentanglement_lib's histogram discretiser (MIG)
PAIR_BATCH = 64  # observations per BetaVAE / FactorVAE training point
PRUNE_THRESHOLD = 0.05  # FactorVAE: dimensions whose standard deviation is below this are collapsed
SAP_C = 0.01


class GroundTruth(Protocol):
    sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def observations(self, classes: np.ndarray) -> Any: ...


Representation = Callable[[Any], np.ndarray]  # observations -> N x d codes


# --- codes and factors ----------------------------------------------------------------------------


def _check(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise VaelabError(f"codes ({codes.shape}) and factors ({factors.shape}) must be N x d and N x K")
    if not np.isfinite(codes).all():
        raise VaelabError("the codes hold NaN or infinite values")
    constant = [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) < 2]
    if constant:
        raise VaelabError(f"factors {constant} take one value in {len(factors)} samples: too few samples")
    return codes, factors


def histogram_discretize(codes: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each dimension cut into ``bins`` equal-width bins over its range (1 .. bins), as disentanglement_lib."""
    codes = np.asarray(codes, dtype=np.float64)
    return np.stack([np.digitize(c, np.histogram(c, bins)[1][:-1]) for c in codes.T], axis=1)


def mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int = BINS) -> np.ndarray:
    """d x K: I(z_j; v_k) in nats between each discretised code dimension and each factor."""
    codes, factors = _check(codes, factors)
    discrete = histogram_discretize(codes, bins)
    return np.array(
        [
            [mutual_info_score(factors[:, k], discrete[:, j]) for k in range(factors.shape[1])]
            for j in range(codes.shape[1])
        ]
    )


def entropy(factors: np.ndarray) -> np.ndarray:
    """K: H(v_k) in nats of each factor's empirical distribution."""
    return np.array([mutual_info_score(f, f) for f in np.asarray(factors).T])


def _top_two_gap(scores: np.ndarray) -> np.ndarray:
    """Per column: the largest minus the second largest (0 stands in for the second of a single row)."""
    ranked = np.sort(np.vstack([scores, np.zeros((1, scores.shape[1]))]), axis=0)[::-1]
    return ranked[0] - ranked[1]


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Mutual Information Gap: mean over factors of (I(z_a; v_k) - I(z_b; v_k)) / H(v_k), a and b the two
    dimensions most informative about v_k. 1: each factor in one dimension alone; 0: none singled out."""
    mi = mutual_information(codes, factors, bins)
    h = entropy(factors)
    per_factor = _top_two_gap(mi) / h
    return {
        "mig": float(per_factor.mean()),
        "mig_per_factor": per_factor.tolist(),
        "mutual_information": mi,
        "entropy": h,
    }


def sap(
    codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray
) -> dict[str, Any]:
    """SAP: per factor, the gap between the two dimensions that predict it best alone (test accuracy of a
    linear SVM on that one dimension, factors taken as discrete), averaged over factors."""
    codes_train, factors_train = _check(codes_train, factors_train)
    codes_test, factors_test = _check(codes_test, factors_test)
    d, k = codes_train.shape[1], factors_train.shape[1]
    scores = np.zeros((d, k))
    for j in range(d):
        for f in range(k):
            classifier = LinearSVC(C=SAP_C, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                classifier.fit(codes_train[:, [j]], factors_train[:, f])
            scores[j, f] = np.mean(classifier.predict(codes_test[:, [j]]) == factors_test[:, f])
    per_factor = _top_two_gap(scores)
    return {"sap": float(per_factor.mean()), "sap_per_factor": per_factor.tolist(), "sap_scores": scores}


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """1 - H_base of each column of the non-negative weights ``p`` (normalised per column)."""
    if base < 2:
        return np.ones(p.shape[1])
    return 1.0 - scipy.stats.entropy(p + 1e-11, base=base, axis=0)


def dci_scores(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of a d x K importance matrix, weighted as Eastwood & Williams."""
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    rho_code = weights.sum(axis=1) / weights.sum()
    rho_factor = weights.sum(axis=0) / weights.sum()
    disentanglement = np.sum(_one_minus_entropy(importance.T, importance.shape[1]) * rho_code)
    completeness = np.sum(_one_minus_entropy(importance, importance.shape[0]) * rho_factor)
    return float(disentanglement), float(completeness)


def dci(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """DCI with gradient-boosted trees (scikit-learn's defaults, as disentanglement_lib): D, C, and the mean
    train and test accuracy of the per-factor classifiers (informativeness)."""
    codes_train, factors_train = _check(codes_train, factors_train)
    codes_test, factors_test = _check(codes_test, factors_test)
    d, k = codes_train.shape[1], factors_train.shape[1]
    importance = np.zeros((d, k))
    train_accuracy, test_accuracy = [], []
    for f in range(k):
        model = GradientBoostingClassifier(random_state=seed)
        model.fit(codes_train, factors_train[:, f])
        importance[:, f] = np.abs(model.feature_importances_)
        train_accuracy.append(np.mean(model.predict(codes_train) == factors_train[:, f]))
        test_accuracy.append(np.mean(model.predict(codes_test) == factors_test[:, f]))
    disentanglement, completeness = dci_scores(importance)
    return {
        "dci_disentanglement": disentanglement,
        "dci_completeness": completeness,
        "dci_informativeness": float(np.mean(test_accuracy)),
        "dci_informativeness_train": float(np.mean(train_accuracy)),
        "dci_importance": importance,
    }


# --- metrics that draw their own observations ------------------------------------------------------


def sample_codes(
    truth: GroundTruth, represent: Representation, n: int, rng: np.random.Generator, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` observations with uniformly drawn factors: their codes (n x d) and factor classes (n x K)."""
    factors = truth.sample_factors(n, rng)
    codes = np.concatenate([_represent(represent, truth, factors[i : i + chunk]) for i in range(0, n, chunk)])
    return codes, factors


def _represent(represent: Representation, truth: GroundTruth, classes: np.ndarray) -> np.ndarray:
    codes = np.asarray(represent(truth.observations(classes)), dtype=np.float64)
    if not np.isfinite(codes).all():
        raise VaelabError("the representation gave NaN or infinite codes")
    return codes


def _fixed_factor_batches(
    truth: GroundTruth, rng: np.random.Generator, points: int, batch: int, copies: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each point a factor k and ``copies`` batches of ``batch`` factor draws (copies x points x batch x K):
    with copies = 2, a pair of batches agreeing in factor k; with copies = 1, one batch whose factor k is one value."""
    num = len(truth.sizes)
    shared = rng.integers(0, num, points)
    draws = truth.sample_factors(copies * points * batch, rng).reshape(copies, points, batch, num)
    rows = np.arange(points)
    if copies == 2:
        draws[1, rows, :, shared] = draws[0, rows, :, shared]
    else:
        draws[0, rows, :, shared] = draws[0, rows, :1, shared]
    return shared, draws


POINT_CHUNK = 256  # points drawn and encoded at a time: memory stays bounded for any number of points


def _chunks(n: int) -> list[int]:
    return [min(POINT_CHUNK, n - start) for start in range(0, n, POINT_CHUNK)]


def _codes_of(truth: GroundTruth, represent: Representation, draws: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Codes of the factor draws ``draws`` (... x K), shaped ... x d."""
    flat = draws.reshape(-1, draws.shape[-1])
    codes = np.concatenate([_represent(represent, truth, flat[i : i + chunk]) for i in range(0, len(flat), chunk)])
    return codes.reshape(*draws.shape[:-1], codes.shape[-1])


def beta_vae_score(
    truth: GroundTruth,
    represent: Representation,
    rng: np.random.Generator,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    batch: int = PAIR_BATCH,
) -> dict[str, Any]:
    """BetaVAE score: accuracy (on ``num_eval`` fresh points) of a logistic regression that tells, from
    mean_b |z(x1_b) - z(x2_b)| over ``batch`` pairs sharing one factor, which factor they shared."""

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        features, labels = [], []
        for count in _chunks(n):
            shared, draws = _fixed_factor_batches(truth, rng, count, batch, copies=2)
            codes = _codes_of(truth, represent, draws)  # 2 x count x batch x d
            features.append(np.abs(codes[0] - codes[1]).mean(axis=1))
            labels.append(shared)
        return np.concatenate(features), np.concatenate(labels)

    train_x, train_y = points(num_train)
    model = LogisticRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x, train_y)
    eval_x, eval_y = points(num_eval)
    return {
        "beta_vae_score": float(np.mean(model.predict(eval_x) == eval_y)),
        "beta_vae_train_accuracy": float(np.mean(model.predict(train_x) == train_y)),
    }


def factor_vae_score(
    truth: GroundTruth,
    represent: Representation,
    rng: np.random.Generator,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance: int = 10_000,
    batch: int = PAIR_BATCH,
    prune_threshold: float = PRUNE_THRESHOLD,
) -> dict[str, Any]:
    """FactorVAE score: each point is a batch with one factor k fixed; the active dimension whose variance,
    divided by its variance over all data, is least votes for k. The score is the accuracy on ``num_eval``
    fresh points of the classifier that maps each dimension to the factor it got most training votes for."""
    global_codes, _ = sample_codes(truth, represent, num_variance, rng)
    global_variance = np.var(global_codes, axis=0, ddof=1)
    active = np.flatnonzero(np.sqrt(global_variance) >= prune_threshold)
    num_factors, d = len(truth.sizes), global_codes.shape[1]
    if len(active) == 0:
        return {"factor_vae_score": 0.0, "factor_vae_train_accuracy": 0.0, "factor_vae_active_dims": 0}

    def votes(n: int) -> np.ndarray:
        table = np.zeros((num_factors, d), dtype=np.int64)
        for count in _chunks(n):
            shared, draws = _fixed_factor_batches(truth, rng, count, batch, copies=1)
            codes = _codes_of(truth, represent, draws)[0]  # count x batch x d
            local = np.var(codes, axis=1, ddof=1)[:, active] / global_variance[active]
            np.add.at(table, (shared, active[np.argmin(local, axis=1)]), 1)
        return table

    train_votes = votes(num_train)
    classifier = np.argmax(train_votes, axis=0)  # dimension -> factor
    eval_votes = votes(num_eval)
    dims = np.arange(d)
    return {
        "factor_vae_score": float(eval_votes[classifier, dims].sum() / eval_votes.sum()),
        "factor_vae_train_accuracy": float(train_votes[classifier, dims].sum() / train_votes.sum()),
        "factor_vae_active_dims": int(len(active)),
    }


# --- all five ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How many samples each metric draws; the defaults are disentanglement_lib's."""

    codes_train: int = 10_000  # MIG, SAP: training codes (DCI fits on the first dci_train of them)
    codes_test: int = 5_000  # SAP: test codes (DCI scores the first dci_test of them)
    dci_train: int = 10_000
    dci_test: int = 5_000
    points_train: int = 10_000  # BetaVAE, FactorVAE: training points (each a batch of `batch` observations)
    points_eval: int = 5_000
    variance: int = 10_000  # FactorVAE: codes behind the global variances
    batch: int = PAIR_BATCH

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 2:
                raise VaelabError(f"the metrics need at least 2 samples for {name}, not {value}")
        if self.dci_train > self.codes_train or self.dci_test > self.codes_test:
            raise VaelabError(
                "DCI's codes are a part of MIG's and SAP's: dci_train <= codes_train, dci_test <= codes_test"
            )

    @classmethod
    def library(cls) -> Sizes:
        return cls()

    @classmethod
    def points(cls, n: int) -> Sizes:
        """``n`` training points for BetaVAE, FactorVAE and DCI (half as many to evaluate), the library's
        sizes for the rest (cheap): ``points(10_000)`` is the library's setting throughout."""
        codes = max(n, 10_000)
        return cls(codes, max(codes // 2, 5_000), n, n // 2, n, n // 2)


DEFAULT_POINTS = 1_000  # BetaVAE / FactorVAE / DCI: a tenth of the library's, for CPU time (docs/disentanglement.md)
METRICS = (
    "beta_vae_score",
    "factor_vae_score",
    "mig",
    "sap",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
)
METRIC_LABELS = {
    "beta_vae_score": "BetaVAE",
    "factor_vae_score": "FactorVAE",
    "mig": "MIG",
    "sap": "SAP",
    "dci_disentanglement": "DCI D",
    "dci_completeness": "DCI C",
    "dci_informativeness": "DCI I",
}


def all_metrics(
    truth: GroundTruth,
    represent: Representation,
    seed: int = 0,
    sizes: Sizes | None = None,
    timings: dict | None = None,
) -> dict[str, Any]:
    """BetaVAE, FactorVAE, MIG, SAP and DCI of one representation, each as its function computes it.
    MIG and SAP share one draw of codes; DCI uses the first ``dci_train`` / ``dci_test`` of the same."""
    sizes = sizes or Sizes()
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if timings is not None:
            timings[name] = round(now - clock, 2)
        clock = now

    result.update(beta_vae_score(truth, represent, rng, sizes.points_train, sizes.points_eval, sizes.batch))
    lap("beta_vae")
    result.update(
        factor_vae_score(truth, represent, rng, sizes.points_train, sizes.points_eval, sizes.variance, sizes.batch)
    )
    lap("factor_vae")
    codes_train, factors_train = sample_codes(truth, represent, sizes.codes_train, rng)
    codes_test, factors_test = sample_codes(truth, represent, sizes.codes_test, rng)
    lap("codes")
    result.update(mig(codes_train, factors_train))
    lap("mig")
    result.update(sap(codes_train, factors_train, codes_test, factors_test))
    lap("sap")
    train, test = slice(0, sizes.dci_train), slice(0, sizes.dci_test)
    result.update(dci(codes_train[train], factors_train[train], codes_test[test], factors_test[test], seed))
    lap("dci")
    return result


__all__ = [
    "BINS",
    "DEFAULT_POINTS",
    "METRICS",
    "METRIC_LABELS",
    "GroundTruth",
    "Sizes",
    "all_metrics",
    "beta_vae_score",
    "dci",
    "dci_scores",
    "entropy",
    "factor_vae_score",
    "histogram_discretize",
    "mig",
    "mutual_information",
    "sample_codes",
    "sap",
]
