"""The disentanglement metrics on hand-made codes whose answer is known.

Factors copied into the code score (near) 1; mixing them lowers the scores; noise scores (near) 0,
or chance for the two classifier scores; permutation and scaling leave alone what each metric
promises to ignore. The ground truth here is a toy: its "observations" are the factor classes.
"""

from __future__ import annotations

import numpy as np
import pytest

from vaelab import VaelabError
from vaelab.eval import disentanglement as D

SIZES = (4, 5, 6)


class Toy:
    """Three independent factors; an observation is its factor classes as floats."""

    sizes = SIZES

    def sample_factors(self, n, rng):
        return np.stack([rng.integers(0, s, n) for s in self.sizes], axis=1)

    def observations(self, classes):
        return np.asarray(classes, dtype=float)


def standardised(x):
    return (x - (np.array(SIZES) - 1) / 2) / np.sqrt((np.array(SIZES) ** 2 - 1) / 12)


def copy(x):
    return x


def mixed(x):
    """Factors 0 and 1 (standardised) rotated by 45 degrees into two dimensions; factor 2 kept."""
    s = standardised(x)
    return np.stack([s[:, 0] + s[:, 1], s[:, 0] - s[:, 1], s[:, 2]], axis=1) / np.sqrt([2, 2, 1])


def noise(x):
    return np.random.default_rng(int(x.sum() * 7 + len(x))).normal(size=(len(x), 3))


def codes_and_factors(represent, n, seed):
    factors = Toy().sample_factors(n, np.random.default_rng(seed))
    return represent(Toy().observations(factors)), factors


@pytest.fixture(scope="module")
def samples():
    """Codes of each representation: 5,000 training, 2,500 test."""
    return {
        name: (codes_and_factors(f, 5000, 0), codes_and_factors(f, 2500, 1))
        for name, f in (("copy", copy), ("mixed", mixed), ("noise", noise))
    }


def test_mig_is_one_for_copied_factors_lower_when_mixed_zero_for_noise(samples):
    scores = {name: D.mig(*train)["mig"] for name, (train, _) in samples.items()}
    assert scores["copy"] > 0.98
    assert scores["mixed"] < scores["copy"] - 0.3
    assert scores["noise"] < 0.02


def test_mig_by_hand():
    """Two dimensions, one factor of two values: z0 copies it (I = H = log 2), z1 is half noise."""
    factor = np.array([0, 0, 1, 1] * 250)
    z = np.stack([factor, np.tile([0, 1], 500)], axis=1).astype(float)
    result = D.mig(z, factor[:, None])
    np.testing.assert_allclose(result["entropy"], [np.log(2)])
    np.testing.assert_allclose(result["mutual_information"][:, 0], [np.log(2), 0.0], atol=1e-12)
    assert result["mig"] == pytest.approx(1.0)


def test_mig_ignores_the_order_and_scale_of_dimensions(samples):
    (codes, factors), _ = samples["mixed"]
    noisy = codes + np.random.default_rng(2).normal(scale=0.1, size=codes.shape)  # no value on a bin edge
    base = D.mig(noisy, factors)["mig"]
    assert D.mig(noisy[:, [2, 0, 1]], factors)["mig"] == pytest.approx(base, abs=1e-12)
    assert D.mig(noisy * [3.0, 0.01, 250.0] + [1, -4, 9], factors)["mig"] == pytest.approx(base, abs=1e-12)


def test_sap_is_high_for_copied_factors_lower_when_mixed_zero_for_noise(samples):
    scores = {name: D.sap(*train, *test)["sap"] for name, (train, test) in samples.items()}
    assert scores["copy"] > 0.3
    assert scores["mixed"] < scores["copy"] - 0.1
    assert abs(scores["noise"]) < 0.05
    (train, test) = samples["mixed"]
    order = [2, 0, 1]
    permuted = D.sap(train[0][:, order], train[1], test[0][:, order], test[1])["sap"]
    assert permuted == pytest.approx(scores["mixed"], abs=1e-12)


@pytest.fixture(scope="module")
def dci_results(samples):
    """DCI on the first 1,000 / 500 codes (gradient-boosted trees are slow)."""
    return {
        name: D.dci(train[0][:1000], train[1][:1000], test[0][:500], test[1][:500])
        for name, (train, test) in samples.items()
    }


def test_dci_is_one_for_copied_factors_lower_when_mixed_zero_for_noise(dci_results):
    copied, mixed_, noise_ = dci_results["copy"], dci_results["mixed"], dci_results["noise"]
    assert copied["dci_disentanglement"] > 0.98 and copied["dci_completeness"] > 0.98
    assert copied["dci_informativeness"] == 1.0
    assert mixed_["dci_disentanglement"] < 0.8 and mixed_["dci_completeness"] < 0.8
    assert mixed_["dci_informativeness"] > 0.9  # mixed, the code still holds every factor
    assert noise_["dci_disentanglement"] < 0.1 and noise_["dci_completeness"] < 0.1
    assert noise_["dci_informativeness"] < 0.4  # chance is 1/4, 1/5, 1/6


def test_dci_ignores_the_order_and_monotone_rescaling_of_dimensions(samples, dci_results):
    (codes, factors), (test_codes, test_factors) = samples["mixed"]
    order, scale = [1, 2, 0], np.array([5.0, 0.2, 30.0])
    moved = D.dci(codes[:1000, order] * scale, factors[:1000], test_codes[:500, order] * scale, test_factors[:500])
    for key in ("dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert moved[key] == pytest.approx(dci_results["mixed"][key], abs=0.02)


def test_dci_scores_of_importance_matrices_by_hand():
    assert D.dci_scores(np.eye(3)) == pytest.approx((1.0, 1.0))
    assert D.dci_scores(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-9)
    # one code carries both factors: D = 0 for it; each factor lives in one code: C = 1
    disentanglement, completeness = D.dci_scores(np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert disentanglement == pytest.approx(0.0, abs=1e-9) and completeness == pytest.approx(1.0)


def _scores(metric, represent, seed=0, **sizes):
    return metric(Toy(), represent, np.random.default_rng(seed), **sizes)


def test_beta_vae_score_is_one_for_copied_factors_lower_when_mixed_chance_for_noise():
    assert _scores(D.beta_vae_score, copy, num_train=300, num_eval=150)["beta_vae_score"] == 1.0
    assert _scores(D.beta_vae_score, mixed, num_train=300, num_eval=300)["beta_vae_score"] < 0.85
    chance = _scores(D.beta_vae_score, noise, num_train=300, num_eval=300)["beta_vae_score"]
    assert abs(chance - 1 / 3) < 0.1


def test_factor_vae_score_is_one_for_copied_factors_lower_when_mixed_chance_for_noise():
    sizes = {"num_train": 300, "num_eval": 300, "num_variance": 2000}
    assert _scores(D.factor_vae_score, copy, **sizes)["factor_vae_score"] == 1.0
    # fixing either of two factors mixed at 45 degrees leaves the same two dimensions half as variable
    assert _scores(D.factor_vae_score, mixed, **sizes)["factor_vae_score"] < 0.8
    assert abs(_scores(D.factor_vae_score, noise, **sizes)["factor_vae_score"] - 1 / 3) < 0.15


def test_factor_vae_score_ignores_scale_and_order_and_prunes_dead_dimensions():
    sizes = {"num_train": 300, "num_eval": 300, "num_variance": 2000}
    base = _scores(D.factor_vae_score, mixed, **sizes)
    scaled = _scores(D.factor_vae_score, lambda x: mixed(x)[:, [2, 0, 1]] * [7.0, 0.5, 40.0], **sizes)
    assert scaled["factor_vae_score"] == base["factor_vae_score"]
    # a constant dimension (std 0 < 0.05) is collapsed: it cannot take the votes of the copied factors
    dead = _scores(D.factor_vae_score, lambda x: np.hstack([np.zeros((len(x), 1)), x]), **sizes)
    assert dead["factor_vae_active_dims"] == 3 and dead["factor_vae_score"] == 1.0


def test_all_metrics_together_and_their_sizes():
    sizes = D.Sizes(
        codes_train=1000, codes_test=500, dci_train=300, dci_test=200, points_train=100, points_eval=50, variance=500
    )
    timings = {}
    result = D.all_metrics(Toy(), copy, seed=3, sizes=sizes, timings=timings)
    assert all(result[key] > 0.9 for key in ("beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement"))
    assert set(timings) == {"beta_vae", "factor_vae", "codes", "mig", "sap", "dci"}
    assert D.all_metrics(Toy(), copy, seed=3, sizes=sizes)["mig"] == result["mig"]  # one seed, one answer
    assert D.Sizes.points(10_000) == D.Sizes.library()
    assert D.Sizes.points(500).dci_train == 500 and D.Sizes.points(500).codes_train == 10_000


def test_bad_codes_are_refused_in_one_line():
    factors = np.stack([np.arange(10) % 2, np.arange(10) % 3], axis=1)
    with pytest.raises(VaelabError, match="NaN"):
        D.mig(np.full((10, 2), np.nan), factors)
    with pytest.raises(VaelabError, match="one value"):
        D.mig(np.ones((10, 2)), np.zeros((10, 1), dtype=int))
    with pytest.raises(VaelabError, match="N x d and N x K"):
        D.mig(np.ones((9, 2)), factors)
    with pytest.raises(VaelabError, match="at least 2"):
        D.Sizes.points(1)
