"""The importance-weighted log-likelihood estimate against a model whose log p(x) is known exactly.

Probabilistic PCA as a VAE: z ~ N(0, I_2), x = W z + b + sigma * eps on 1 x 2 x 3 "images", so
p(x) = N(b, W W^T + sigma^2 I) and the exact posterior is N(A (x - b), sigma^2 M^-1) with
M = W^T W + sigma^2 I, A = M^-1 W^T. The encoder is a Linear layer with chosen weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from vaelab.config import ModelConfig
from vaelab.distributions import DiagonalGaussian, GaussianLikelihood, StandardNormal
from vaelab.errors import VaelabError
from vaelab.eval import estimate_log_likelihood, iwae_bound
from vaelab.eval.nll import NOISE_BLOCK, image_generators
from vaelab.model import ELBO, VAE, Context, build_vae

D, LATENT, SHAPE, SIGMA = 6, 2, (1, 2, 3), 0.3
# columns strongly aligned: the exact posterior has correlation -0.94, which no diagonal q fits
W_CORRELATED = torch.tensor([[1.0, 0.8], [0.5, 0.6], [-0.8, -0.5], [1.5, 1.2], [0.0, 0.3], [-0.4, -0.6]])
# orthogonal columns: the exact posterior is diagonal, so the DiagonalGaussian family holds it
W_ORTHOGONAL = torch.linalg.qr(W_CORRELATED + torch.tensor([0.0, 1.0]))[0] * torch.tensor([2.0, 1.0])
B = torch.linspace(-1.0, 1.0, D)


def ppca_vae(W: torch.Tensor, mean_scale: float = 1.0, var_scale: float = 1.0) -> VAE:
    """PPCA as a VAE whose encoder outputs the exact posterior's mean (times ``mean_scale``) and its
    marginal variances (times ``var_scale``) as [mu, log var]."""
    M = W.T @ W + SIGMA**2 * torch.eye(LATENT)
    A = torch.linalg.solve(M, W.T)
    posterior_var = (SIGMA**2 * torch.linalg.inv(M)).diagonal()
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(D, 2 * LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, D), nn.Unflatten(1, SHAPE))
    with torch.no_grad():
        encoder[1].weight.copy_(torch.cat([mean_scale * A, torch.zeros(LATENT, D)]))
        encoder[1].bias.copy_(torch.cat([-mean_scale * A @ B, torch.log(var_scale * posterior_var)]))
        decoder[0].weight.copy_(W)
        decoder[0].bias.copy_(B)
    model = VAE(encoder, DiagonalGaussian(), StandardNormal(LATENT), decoder, GaussianLikelihood(SIGMA), LATENT, SHAPE)
    return model.eval()


def ppca_data(W: torch.Tensor, n: int, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """n images drawn from the model, and their exact log p(x) (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, LATENT, generator=g) @ W.T + B + SIGMA * torch.randn(n, D, generator=g)
    exact = MultivariateNormal(B.double(), (W @ W.T + SIGMA**2 * torch.eye(D)).double()).log_prob(x.double())
    return x.reshape(n, *SHAPE), exact


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def test_exact_posterior_gives_the_exact_likelihood_for_any_k():
    # with q = p(z|x) every importance weight equals p(x): no bias, no variance
    model = ppca_vae(W_ORTHOGONAL)
    x, exact = ppca_data(W_ORTHOGONAL, 50)
    torch.manual_seed(0)
    for k in (1, 7):
        torch.testing.assert_close(iwae_bound(model, x, k), exact, atol=1e-4, rtol=0)


def test_bounds_increase_with_k_towards_the_exact_likelihood():
    model = ppca_vae(W_CORRELATED, mean_scale=0.9)
    x, exact = ppca_data(W_CORRELATED, 1000)
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = -ELBO()(model, x).total.double()
    bounds = [elbo] + [iwae_bound(model, x, k) for k in (2, 20)] + [exact]
    # every step of ELBO <= IWAE_2 <= IWAE_20 <= log p(x), paired over the same images, by > 3 SE
    for lower, upper in zip(bounds, bounds[1:]):
        gap, stderr = mean_and_stderr(upper - lower)
        assert gap > 3 * stderr, (gap, stderr)

    result = estimate_log_likelihood(model, [x[:500], x[500:]], k=5000, seed=0, return_per_image=True)
    assert result["k"] == 5000 and result["images"] == 1000
    estimate = -torch.tensor(result["per_image"], dtype=torch.float64)
    error, stderr = mean_and_stderr(exact - estimate)
    assert abs(error) < 4 * stderr + 1e-3, (error, stderr)  # paired: the estimator's own error
    assert abs(result["nll"] + exact.mean().item()) < result["nll_stderr"]  # the test-set error bar
    assert result["nll_stderr"] == pytest.approx(estimate.std().item() / math.sqrt(1000), rel=1e-6)
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (D * math.log(2)))


def test_the_estimate_is_deterministic_and_independent_of_the_chunking():
    model = ppca_vae(W_CORRELATED, mean_scale=0.9)
    x, _ = ppca_data(W_CORRELATED, 40)
    rng_before = torch.get_rng_state()
    runs = [
        estimate_log_likelihood(model, [x], k=300, seed=3, return_per_image=True, **chunking)
        for chunking in ({}, {"max_elements": 1}, {"max_elements": 7 * 64 * 5}, {"max_elements": 10**9})
    ]
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    reference = torch.tensor(runs[0]["per_image"])
    for run in runs[1:]:
        torch.testing.assert_close(torch.tensor(run["per_image"]), reference, atol=1e-5, rtol=1e-6)
    again = estimate_log_likelihood(model, [x], k=300, seed=3, return_per_image=True)
    assert again == runs[0]
    # nor on how the caller batched the images
    rebatched = estimate_log_likelihood(model, [x[:13], x[13:30], x[30:]], k=300, seed=3, return_per_image=True)
    assert rebatched == runs[0]
    other_seed = estimate_log_likelihood(model, [x], k=300, seed=4)
    assert other_seed["nll"] != runs[0]["nll"]


def test_iwae_bound_is_one_logsumexp_over_the_models_log_weights_whatever_the_grouping():
    model = ppca_vae(W_CORRELATED, mean_scale=0.9)
    x, _ = ppca_data(W_CORRELATED, 10)
    streamed = iwae_bound(model, x, 100, seed=5, max_elements=NOISE_BLOCK * x[0].numel() * 3)  # 3 images a call
    # the same draws written out: image i's own stream, blocks of 64 then 36 samples
    generators = image_generators(5, 0, 10)
    with torch.no_grad():
        log_w = torch.cat([model.log_weights(x, s, Context(generators=generators)).log_w for s in (64, 36)])
    torch.testing.assert_close(streamed, (torch.logsumexp(log_w, 0) - math.log(100)).double(), atol=1e-5, rtol=0)
    # and the weights are log p(x|z) + log p(z) - log q(z|x) at the drawn z
    generators = image_generators(5, 0, 10)
    eps = Context(generators=generators).noise((64, 10, 2), x)
    q = model.q_z(x)
    z = q.mean + eps * q.stddev
    with torch.no_grad():
        direct = model.p_x(z).log_prob(x) + model.p_z().log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(log_w[:64], direct, atol=1e-4, rtol=1e-5)


def test_user_errors_are_reported():
    model = ppca_vae(W_CORRELATED)
    x, _ = ppca_data(W_CORRELATED, 3)
    with pytest.raises(VaelabError, match="k must be >= 1"):
        estimate_log_likelihood(model, [x], k=0)
    with pytest.raises(VaelabError, match="no images"):
        estimate_log_likelihood(model, [], k=10)


def test_the_study_sampler_is_importance_sampled_from_the_density_its_weights_use():
    # z = mu + L eps is not the density log q is; the NLL samples the diagonal N(mu, sigma^2) instead,
    # so the same weights give the same estimate as the model with the ordinary sampler
    config = ModelConfig(arch="mlp", hidden=[16], prior="correlated", prior_sampling="study")
    torch.manual_seed(0)
    study = build_vae(config, (1, 28, 28)).eval()
    plain = build_vae(ModelConfig(arch="mlp", hidden=[16], prior="correlated"), (1, 28, 28)).eval()
    plain.load_state_dict({k: v for k, v in study.state_dict().items() if "prior_scale_tril" not in k})
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(iwae_bound(study, x, 50, seed=1), iwae_bound(plain, x, 50, seed=1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli"])
def test_a_bernoulli_nll_on_grey_levels_says_it_is_not_a_log_likelihood(likelihood):
    model = build_vae(ModelConfig(arch="dense", latent_dim=2, likelihood=likelihood), (1, 28, 28)).eval()
    grey = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    on_grey = estimate_log_likelihood(model, [grey], k=2)
    on_binary = estimate_log_likelihood(model, [(grey > 0.5).float()], k=2)
    assert "likelihood_note" not in on_binary
    if likelihood == "bernoulli":  # normalised over {0, 1}^D only
        assert on_grey["likelihood_note"].startswith("not a log-likelihood")
    else:  # a density on [0, 1]^D
        assert "likelihood_note" not in on_grey
