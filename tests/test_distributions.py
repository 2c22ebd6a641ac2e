"""Priors, posteriors, likelihoods and the registered closed-form KL, checked against torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from vaelab import VaelabError
from vaelab.distributions import (
    BernoulliLikelihood,
    CorrelatedGaussian,
    DiagonalGaussian,
    DiagonalGaussianStudySampling,
    GaussianLikelihood,
    StandardNormal,
    kl_terms,
    study_covariance,
)
from vaelab.distributions.kl import kl_diagonal_normal_full_normal


def _random_spd(d, generator, batch=()):
    a = torch.randn(*batch, d, d, generator=generator, dtype=torch.float64)
    return a @ a.transpose(-1, -2) + 0.5 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("d", [2, 3, 5])
@pytest.mark.parametrize("batched_prior", [False, True], ids=["one-sigma", "sigma-per-image"])
def test_kl_diagonal_vs_full_matches_torch(d, batched_prior):
    g = torch.Generator().manual_seed(d)
    batch = 6
    mu = torch.randn(batch, d, generator=g, dtype=torch.float64) * 2
    sigma = torch.rand(batch, d, generator=g, dtype=torch.float64) * 2 + 0.1
    cov = _random_spd(d, g, (batch,) if batched_prior else ())
    loc = torch.randn(d, generator=g, dtype=torch.float64)
    q = Independent(Normal(mu, sigma), 1)
    p = MultivariateNormal(loc, covariance_matrix=cov)
    ours = kl_divergence(q, p)  # dispatches to vaelab's registered rule
    q_full = MultivariateNormal(mu, covariance_matrix=torch.diag_embed(sigma**2))
    reference = kl_divergence(q_full, p)
    assert ours.shape == (batch,) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kl_diagonal_normal_full_normal(q, p), reference, rtol=1e-10, atol=1e-10)
    assert (ours > 0).all()


def test_kl_rule_is_registered_for_the_model_classes():
    """The prior and posterior modules produce distributions that reach the registered rule."""
    prior = CorrelatedGaussian([[1.0, 0.8], [0.8, 1.0]])
    params = torch.tensor([[0.3, -1.0, -0.5, 0.2]])
    q = DiagonalGaussian()(params)
    kl, per_dim = kl_terms(q, prior())
    assert per_dim is None  # the correlated prior does not factorise
    mu, sigma = params[:, :2], torch.exp(0.5 * params[:, 2:])
    reference = kl_divergence(
        MultivariateNormal(mu, torch.diag_embed(sigma**2)),
        MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.8], [0.8, 1.0]])),
    )
    torch.testing.assert_close(kl, reference, rtol=1e-5, atol=1e-6)


def test_kl_terms_standard_normal_closed_form():
    g = torch.Generator().manual_seed(0)
    d, batch = 4, 8
    mu = torch.randn(batch, d, generator=g, dtype=torch.float64)
    log_var = torch.randn(batch, d, generator=g, dtype=torch.float64)
    q = DiagonalGaussian()(torch.cat([mu, log_var], -1))
    p = StandardNormal(d).double()()
    kl, per_dim = kl_terms(q, p)
    var = log_var.exp()
    expected_per_dim = 0.5 * (mu**2 + var - 1 - log_var)
    assert per_dim is not None and per_dim.shape == (batch, d)
    torch.testing.assert_close(per_dim, expected_per_dim)
    torch.testing.assert_close(kl, expected_per_dim.sum(-1))
    torch.testing.assert_close(per_dim.sum(-1), kl)


def test_diagonal_posterior_parameters():
    params = torch.tensor([[1.0, -2.0, math.log(4.0), math.log(0.25)]])
    q = DiagonalGaussian()(params)
    torch.testing.assert_close(q.mean, torch.tensor([[1.0, -2.0]]))
    torch.testing.assert_close(q.stddev, torch.tensor([[2.0, 0.5]]))  # sigma = exp(log_var / 2)
    assert DiagonalGaussian().param_size(3) == 6
    assert q.rsample((5,)).shape == (5, 1, 2)


# --- the correlated prior --------------------------------------------------------------------


@pytest.mark.parametrize(
    "cov, needle",
    [
        ([[1.0, 1.2], [1.2, 1.0]], "positive definite"),
        ([[1.0, 1.0], [1.0, 1.0]], "positive definite"),  # singular
        ([[1.0, 0.5], [0.1, 1.0]], "symmetric"),
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "square"),
        ([1.0, 1.0], "square"),
        ([[1.0, float("nan")], [float("nan"), 1.0]], "non-finite"),
    ],
    ids=["not-pd", "singular", "not-symmetric", "2x3", "vector", "nan"],
)
def test_correlated_prior_rejects_bad_covariance(cov, needle):
    with pytest.raises(VaelabError, match=needle):
        CorrelatedGaussian(cov)


def test_correlated_prior_error_gives_eigenvalues():
    with pytest.raises(VaelabError) as info:
        CorrelatedGaussian([[1.0, 1.2], [1.2, 1.0]])
    assert "-0.2" in str(info.value) and "2.2" in str(info.value)


def test_correlated_prior_samples_have_its_covariance():
    cov = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.5, -0.3], [0.0, -0.3, 0.7]])
    prior = CorrelatedGaussian(cov)
    torch.testing.assert_close(prior.covariance, cov)
    torch.manual_seed(0)
    z = prior().sample((200_000,))
    assert z.shape == (200_000, 3)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.02, rtol=0)


def test_study_covariance():
    assert study_covariance(2) == [[1.0, 0.8], [0.8, 1.0]]
    cov = study_covariance(3, 0.5)
    assert cov == [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert study_covariance(1) == [[1.0]]


def test_study_sampling_ignores_encoder_sigma():
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    L = torch.linalg.cholesky(cov)
    posterior = DiagonalGaussianStudySampling(L)
    torch.manual_seed(1)
    n = 100_000
    for log_var in ([-6.0, -6.0], [2.0, 0.0]):
        params = torch.tensor([[0.5, -1.0, *log_var]])
        q = posterior(params)
        z = q.rsample((n,))
        assert z.shape == (n, 1, 2)
        z = z[:, 0]
        torch.testing.assert_close(z.mean(0), torch.tensor([0.5, -1.0]), atol=0.02, rtol=0)
        torch.testing.assert_close(torch.cov(z.T), L @ L.T, atol=0.02, rtol=0)
        # while its density (and so the KL) is still the encoder's diagonal Gaussian
        torch.testing.assert_close(q.stddev, torch.exp(0.5 * torch.tensor([log_var])))


# --- likelihoods -----------------------------------------------------------------------------


def test_bernoulli_likelihood_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 5, 4, generator=g) * 3
    binary = torch.bernoulli(torch.full((3, 1, 5, 4), 0.4), generator=g)
    grey = torch.rand(3, 1, 5, 4, generator=g)  # grey-level targets, the study's convention
    p = BernoulliLikelihood()(logits)
    assert p.batch_shape == (3,) and p.event_shape == (1, 5, 4)
    for x in (binary, grey):
        expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        torch.testing.assert_close(p.log_prob(x), expected)
    torch.testing.assert_close(p.mean, torch.sigmoid(logits))


def test_bernoulli_likelihood_is_stable_for_large_logits():
    logits = torch.tensor([[[[200.0, -200.0]]]])
    x = torch.tensor([[[[1.0, 0.0]]]])
    assert BernoulliLikelihood()(logits).log_prob(x).item() == pytest.approx(0.0, abs=1e-6)
    assert BernoulliLikelihood()(logits).log_prob(1 - x).item() == pytest.approx(-400.0, rel=1e-6)


def test_gaussian_likelihood_closed_form():
    g = torch.Generator().manual_seed(0)
    scale = 0.1
    mean = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64)
    x = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64)
    p = GaussianLikelihood(scale)(mean)
    per_pixel = -0.5 * ((x - mean) / scale) ** 2 - 0.5 * math.log(2 * math.pi * scale**2)
    torch.testing.assert_close(p.log_prob(x), per_pixel.sum((1, 2, 3)))
    # the normalising constant is there: at x = mean the density is 9 times log(1 / sqrt(2 pi s^2))
    torch.testing.assert_close(
        p.log_prob(mean), torch.full((2,), -4.5 * math.log(2 * math.pi * scale**2), dtype=torch.float64)
    )
