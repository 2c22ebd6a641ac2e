"""The prior and likelihood families of issue 13, each against an independent computation
(numerical integration, a closed form written out here, torch.distributions, Monte Carlo), and each
trained for one epoch from the CLI and evaluated with ``vaelab eval --nll``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import ContinuousBernoulli, Normal, kl_divergence

from tests.conftest import TINY, set_args
from vaelab import VaelabError
from vaelab.config import ModelConfig
from vaelab.core.registry import LIKELIHOODS, PRIORS
from vaelab.distributions.kl import kl_terms
from vaelab.distributions.likelihoods import (
    LEVELS,
    MIN_SCALE,
    ContinuousBernoulliLikelihood,
    DecodedGaussianLikelihood,
    DiscretizedLogisticMixture,
    LearnedScaleGaussianLikelihood,
    LogisticMixtureLikelihood,
    StableContinuousBernoulli,
)
from vaelab.model import build_vae
from vaelab.model.objectives import ELBO, IWAE

NEW_LIKELIHOODS = ("continuous-bernoulli", "gaussian-learned", "gaussian-decoded", "logistic-mixture")
NEW_PRIORS = ("learnable", "mog", "vamp")
LOGITS = (-300.0, -60.0, -17.0, -5.0, -0.5, -0.1, -0.0999, -1e-3, 0.0, 1e-4, 0.05, 0.1, 1.0, 17.0, 60.0, 300.0)


def _model(**overrides):
    torch.manual_seed(0)
    config = ModelConfig(arch="mlp", hidden=[16], latent_dim=2, **overrides)
    return build_vae(config, (1, 28, 28))


def _images(n=6, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _integrate_unit_interval(f) -> float:
    """The integral of f over [0, 1] by 32-point Gauss-Legendre on panels that shrink geometrically
    towards both ends (with |logit| = 300 a continuous Bernoulli keeps its mass within 0.02 of an end)."""
    ends = [10.0**-k for k in range(1, 10)]
    edges = sorted({0.0, 0.5, 1.0, *ends, *(1 - e for e in ends)})
    nodes, weights = np.polynomial.legendre.leggauss(32)
    total = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        x = (b - a) / 2 * nodes + (a + b) / 2
        total += (b - a) / 2 * float((weights * f(x)).sum())
    return total


def _cb_density(eta: float, dtype: torch.dtype):
    def density(x: np.ndarray) -> np.ndarray:
        x = torch.tensor(x, dtype=dtype)
        dist = StableContinuousBernoulli(logits=torch.full_like(x, eta), validate_args=False)
        return dist.log_prob(x).double().exp().numpy()

    return density


# --- continuous Bernoulli ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-4)], ids=["f64", "f32"])
@pytest.mark.parametrize("eta", LOGITS)
def test_continuous_bernoulli_density_integrates_to_one(eta, dtype, tolerance):
    assert _integrate_unit_interval(_cb_density(eta, dtype)) == pytest.approx(1.0, abs=tolerance)


@pytest.mark.parametrize("eta", LOGITS)
def test_continuous_bernoulli_mean_is_the_integral_of_x_times_the_density(eta):
    density = _cb_density(eta, torch.float64)
    expected = _integrate_unit_interval(lambda x: x * density(x))
    mean = StableContinuousBernoulli(logits=torch.tensor(eta, dtype=torch.float64), validate_args=False).mean
    assert float(mean) == pytest.approx(expected, abs=1e-9)
    mean32 = StableContinuousBernoulli(logits=torch.tensor(eta), validate_args=False).mean
    assert float(mean32) == pytest.approx(expected, abs=1e-6)


def test_continuous_bernoulli_matches_the_closed_form_and_torch_where_torch_is_exact():
    eta = torch.tensor([-700.0, -40.0, -3.0, -0.2, -1e-3, 2e-3, 0.7, 9.0, 40.0, 700.0], dtype=torch.float64)
    x = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None]
    closed_form = eta * x + torch.log(eta / torch.expm1(eta))  # log of eta e^(eta x) / (e^eta - 1)
    ours = StableContinuousBernoulli(logits=eta.expand_as(closed_form), validate_args=False).log_prob(x)
    torch.testing.assert_close(ours, closed_form, rtol=1e-12, atol=1e-12)
    ours32 = StableContinuousBernoulli(logits=eta.float().expand_as(closed_form), validate_args=False)
    torch.testing.assert_close(ours32.log_prob(x.float()).double(), closed_form, rtol=1e-6, atol=2e-5)
    # torch computes from probs, exact in float64 away from its Taylor band near 0 and from saturation
    moderate = (eta.abs() >= 0.1) & (eta.abs() <= 15)
    theirs = ContinuousBernoulli(logits=eta[moderate].expand(11, -1), validate_args=False).log_prob(x)
    torch.testing.assert_close(ours[:, moderate], theirs, rtol=1e-10, atol=1e-10)


def test_continuous_bernoulli_gradient_is_finite_at_and_around_logit_zero():
    eta = torch.tensor([0.0, 0.1, -0.1, 0.0999, 1e-30, 300.0, -300.0], requires_grad=True)
    dist = StableContinuousBernoulli(logits=eta, validate_args=False)
    (dist.log_prob(torch.full_like(eta, 0.3)).sum() + dist.mean.sum()).backward()
    assert torch.isfinite(eta.grad).all()
    # d/d eta log p(x) = x - E[x] (an exponential family): at eta = 0, 0.3 - 0.5 plus dE/deta = 1/12
    assert float(eta.grad[0]) == pytest.approx(0.3 - 0.5 + 1 / 12, abs=1e-6)


def test_continuous_bernoulli_output_for_mean_inverts_the_mean():
    likelihood = ContinuousBernoulliLikelihood()
    target = torch.tensor([0.01, 0.02, 0.3, 0.5, 0.5001, 0.77, 0.99])
    logits = likelihood.output_for_mean(target)
    torch.testing.assert_close(StableContinuousBernoulli(logits=logits).mean, target, atol=1e-6, rtol=0)
    assert float(likelihood.output_for_mean(torch.tensor(0.0))) == pytest.approx(float(logits[0]))  # clamped


# --- Gaussians with a learned scale ------------------------------------------------------------


def _normal_log_density(x, mean, scale):
    return (-0.5 * ((x - mean) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum((-3, -2, -1))


def test_gaussian_learned_is_a_normal_with_one_learned_scale_per_pixel():
    likelihood = LearnedScaleGaussianLikelihood((1, 4, 5), initial_scale=0.2)
    torch.testing.assert_close(MIN_SCALE + likelihood.log_scale.exp(), torch.full((1, 4, 5), 0.2))
    with torch.no_grad():
        likelihood.log_scale.copy_(torch.linspace(-100, 1, 20).reshape(1, 4, 5))
    mean, x = torch.rand(3, 1, 4, 5), torch.rand(3, 1, 4, 5)
    log_p = likelihood(mean).log_prob(x)
    scale = MIN_SCALE + torch.linspace(-100, 1, 20).reshape(1, 4, 5).exp()
    torch.testing.assert_close(log_p, _normal_log_density(x, mean, scale))
    assert float(likelihood(mean).stddev.min().detach()) == pytest.approx(MIN_SCALE)  # the floor holds
    log_p.sum().backward()
    assert likelihood.log_scale.grad is not None and torch.isfinite(likelihood.log_scale.grad).all()


def test_gaussian_decoded_reads_mean_then_log_variance_channels():
    likelihood = DecodedGaussianLikelihood(initial_scale=0.1)
    out, x = torch.randn(3, 2, 4, 5), torch.rand(3, 1, 4, 5)
    scale = MIN_SCALE + torch.exp(0.5 * out[:, 1:])
    torch.testing.assert_close(likelihood(out).log_prob(x), _normal_log_density(x, out[:, :1], scale))
    mean_image = torch.rand(1, 4, 5)
    start = likelihood(likelihood.output_for_mean(mean_image))
    torch.testing.assert_close(start.mean, mean_image)
    torch.testing.assert_close(start.stddev, torch.full_like(mean_image, 0.1))


@pytest.mark.parametrize("likelihood", ["gaussian-learned", "gaussian-decoded"])
def test_a_learned_scale_needs_a_start_above_its_floor(likelihood):
    with pytest.raises(VaelabError, match="likelihood_scale must be > 0.001"):
        _model(likelihood=likelihood, likelihood_scale=MIN_SCALE)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize(
    "likelihood", ["bernoulli", "gaussian", "continuous-bernoulli", "gaussian-learned", "gaussian-decoded"]
)
def test_output_bias_starts_the_likelihood_at_the_data_mean(arch, likelihood):
    """With the last layer's weights zeroed the decoder outputs only its bias: p(x|z)'s mean must then
    be the mean image (MLP: per pixel; conv: one bias per channel, so the mean intensity)."""
    torch.manual_seed(0)
    model = build_vae(ModelConfig(arch=arch, hidden=[32], latent_dim=2, likelihood=likelihood), (1, 28, 28))
    mean_image = torch.rand(1, 28, 28) * 0.9 + 0.05
    model.init_output_bias(mean_image)
    last = model.decoder.net[0][-1] if arch == "mlp" else model.decoder.net[-1]
    with torch.no_grad():
        last.weight.zero_()
    mean = model.p_x(torch.randn(3, 2)).mean
    expected = mean_image if arch == "mlp" else torch.full_like(mean_image, mean_image.mean().item())
    torch.testing.assert_close(mean, expected.expand_as(mean), atol=1e-5, rtol=1e-5)


def test_the_logistic_mixture_says_data_mean_is_not_available():
    with pytest.raises(VaelabError, match="data-mean is not available for the logistic-mixture"):
        _model(likelihood="logistic-mixture").init_output_bias(torch.rand(1, 28, 28))


# --- discretised logistic mixture --------------------------------------------------------------


def _one_pixel_mixtures(dtype=torch.float64, requires_grad=False):
    """Single-pixel mixtures of 3 logistics (a batch of 28), locations inside and far outside [0, 1],
    scales from the floor e^-7 to e^3."""
    locs = torch.tensor([-3.0, -0.2, 0.0, 0.003, 0.5, 0.999, 1.0, 1.4, 5.0], dtype=dtype)
    log_scales = torch.tensor([-7.0, -3.0, 0.0, 3.0], dtype=dtype)
    g = torch.Generator().manual_seed(0)
    loc = locs[torch.randint(len(locs), (28, 3), generator=g)]
    log_scale = log_scales[torch.randint(len(log_scales), (28, 3), generator=g)]
    logits = torch.randn(28, 3, generator=g, dtype=dtype) * 2
    params = [t.reshape(28, 3, 1, 1, 1).requires_grad_(requires_grad) for t in (logits, loc, log_scale)]
    return DiscretizedLogisticMixture(*params), params


def _all_levels(dtype=torch.float64):
    return (torch.arange(LEVELS, dtype=dtype) / (LEVELS - 1)).reshape(LEVELS, 1, 1, 1, 1)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-6)], ids=["f64", "f32"])
def test_logistic_mixture_probabilities_sum_to_one_over_the_256_levels(dtype, tolerance):
    dist, _ = _one_pixel_mixtures(dtype)
    log_p = dist.log_prob(_all_levels(dtype))  # 256 levels x 28 mixtures
    assert log_p.shape == (LEVELS, 28)
    torch.testing.assert_close(
        torch.logsumexp(log_p.double(), 0), torch.zeros(28, dtype=torch.float64), atol=tolerance, rtol=0
    )


def test_logistic_mixture_matches_the_difference_of_logistic_cdfs():
    dist, (logits, loc, log_scale) = _one_pixel_mixtures()
    level = torch.arange(LEVELS, dtype=torch.float64).reshape(LEVELS, 1, 1, 1, 1, 1)
    upper = torch.where(level == LEVELS - 1, math.inf, (level + 0.5) / 255)
    lower = torch.where(level == 0, -math.inf, (level - 0.5) / 255)
    cdf = lambda edge: torch.sigmoid((edge - loc) / log_scale.exp())  # noqa: E731
    naive = (torch.softmax(logits, 1) * (cdf(upper) - cdf(lower))).sum(-4).squeeze((-3, -2, -1))
    torch.testing.assert_close(dist.log_prob(_all_levels()).exp(), naive, atol=1e-12, rtol=1e-9)


def test_logistic_mixture_mean_is_the_expected_level():
    dist, _ = _one_pixel_mixtures()
    p = dist.log_prob(_all_levels()).exp()
    expected = (p * _all_levels().reshape(LEVELS, 1)).sum(0)
    torch.testing.assert_close(dist.mean.reshape(28), expected, atol=1e-12, rtol=0)


def test_logistic_mixture_samples_follow_its_probabilities():
    dist, _ = _one_pixel_mixtures()
    torch.manual_seed(0)
    n = 40_000
    levels = (dist.sample((n,)).reshape(n, 28) * 255).round().long()
    frequency = torch.nn.functional.one_hot(levels, LEVELS).double().mean(0).T  # 256 x 28
    p = dist.log_prob(_all_levels()).exp()
    assert (frequency - p).abs().le(5 * (p * (1 - p) / n).sqrt() + 1e-4).all()


def test_logistic_mixture_gradients_are_finite_at_the_extremes():
    dist, params = _one_pixel_mixtures(torch.float32, requires_grad=True)
    x = torch.tensor([0.0, 1 / 255, 128 / 255, 254 / 255, 1.0]).reshape(5, 1, 1, 1, 1)
    dist.log_prob(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in params)


def test_logistic_mixture_likelihood_reads_logits_locations_and_log_scales_in_that_order():
    likelihood = LogisticMixtureLikelihood(components=2)
    out = torch.randn(4, 3 * 2 * 3, 5, 5) * 4  # 3 channels, K = 2
    dist = likelihood(out)
    groups = out.unflatten(1, (3, 2, 3))
    torch.testing.assert_close(dist.logits, groups[:, 0])
    torch.testing.assert_close(dist.loc, groups[:, 1])
    torch.testing.assert_close(dist.log_scale, groups[:, 2].clamp(min=-7))
    assert dist.event_shape == (3, 5, 5) and dist.batch_shape == (4,)
    assert likelihood.params_per_channel == 6


# --- priors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prior", ["standard", "correlated"])
def test_standard_and_correlated_priors_draw_as_before(prior):
    """z = loc + eps L^T with eps from the generator: the shipped models' sample figures depend on it."""
    model = _model(prior=prior)
    eps = torch.randn((50, 2), generator=torch.Generator().manual_seed(3))
    frame = model.prior.correlated_frame()
    expected = eps if frame is None else eps @ frame[1].T
    z = model.prior.sample(50, torch.Generator().manual_seed(3), model.q_z)
    assert torch.equal(z, expected)
    torch.testing.assert_close(model.sample(50, torch.Generator().manual_seed(3)), model.decode(expected))


def test_only_the_correlated_prior_gives_a_frame_to_the_figures():
    frames = {name: _model(prior=name).prior.correlated_frame() for name in PRIORS.names()}
    assert [name for name, frame in frames.items() if frame is not None] == ["correlated"]
    loc, L = frames["correlated"]
    torch.testing.assert_close(L @ L.T, torch.tensor([[1.0, 0.8], [0.8, 1.0]]))
    assert torch.equal(loc, torch.zeros(2))


def test_learnable_prior_keeps_the_closed_form_kl_and_learns():
    model = _model(prior="learnable")
    with torch.no_grad():
        model.prior.loc.copy_(torch.tensor([0.5, -1.0]))
        model.prior.log_scale.copy_(torch.tensor([0.3, -0.2]))
    x = _images()
    q, p = model.q_z(x), model.p_z()
    kl, per_dim = kl_terms(q, p)
    reference = kl_divergence(Normal(q.base_dist.loc, q.base_dist.scale), Normal(p.base_dist.loc, p.base_dist.scale))
    torch.testing.assert_close(per_dim, reference)
    ELBO()(model, x).loss.backward()
    assert model.prior.loc.grad.abs().sum() > 0 and model.prior.log_scale.grad.abs().sum() > 0


def test_mog_prior_density_is_the_weighted_sum_of_its_gaussians():
    model = _model(prior="mog", prior_components=4)
    prior = model.prior
    z = torch.randn(9, 2) * 2
    log_components = (
        -0.5 * ((z[:, None] - prior.means) / prior.log_scales.exp()) ** 2
        - prior.log_scales
        - 0.5 * math.log(2 * math.pi)
    ).sum(-1)
    expected = torch.logsumexp(torch.log_softmax(prior.logits, 0) + log_components, 1)
    torch.testing.assert_close(model.p_z().log_prob(z), expected)
    torch.testing.assert_close(model.p_z().log_prob(z[None].expand(3, 9, 2)), expected.expand(3, 9))  # k x B x d


def test_vamp_prior_density_is_the_mean_posterior_at_its_pseudo_inputs():
    model = _model(prior="vamp", prior_components=5)
    u = model.prior.pseudo_inputs.detach()
    assert u.shape == (5, 1, 28, 28) and float(u.min()) > 0 and float(u.max()) < 1
    z = torch.randn(7, 2)
    each = torch.stack([model.q_z(u_k[None]).log_prob(z) for u_k in u])  # q(z | u_k) one at a time
    expected = torch.logsumexp(each, 0) - math.log(5)
    torch.testing.assert_close(model.p_z().log_prob(z), expected)


def test_vamp_prior_learns_its_pseudo_inputs_and_the_encoder_through_the_prior():
    model = _model(prior="vamp", prior_components=5)
    z = torch.randn(7, 2)
    model.p_z().log_prob(z).sum().backward()
    assert model.prior.pseudo_logits.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_mixture_priors_draw_from_the_generator_alone(prior):
    model = _model(prior=prior, prior_components=3)
    rng_before = torch.get_rng_state()
    a = model.prior.sample(20_000, torch.Generator().manual_seed(1), model.q_z)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(a, model.prior.sample(20_000, torch.Generator().manual_seed(1), model.q_z))
    assert not torch.equal(a[:10], model.prior.sample(10, torch.Generator().manual_seed(2), model.q_z))
    # the draws have the mixture's mean and covariance (within 5 standard errors)
    with torch.no_grad():
        p = model.p_z()
        weights, means = p.mixture_distribution.probs, p.component_distribution.mean
        variances = p.component_distribution.variance
        mean = (weights[:, None] * means).sum(0)
        second = (weights[:, None, None] * (torch.diag_embed(variances) + means[:, :, None] * means[:, None, :])).sum(0)
        covariance = second - mean[:, None] * mean[None, :]
    standard_error = (covariance.diagonal() / len(a)).sqrt()
    assert ((a.mean(0) - mean).abs() < 5 * standard_error).all()
    torch.testing.assert_close(torch.cov(a.T), covariance, rtol=0.05, atol=0.05 * float(covariance.diagonal().max()))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_without_a_closed_form_the_kl_is_the_one_sample_estimate(prior):
    """ELBO's KL is log q(z) - log p(z) at its own z, so its total is -log w: IWAE with k = 1 exactly."""
    model = _model(prior=prior, prior_components=3)
    x = _images()
    torch.manual_seed(5)
    elbo = ELBO()(model, x)
    torch.manual_seed(5)
    q = model.q_z(x)
    z = q.rsample()
    torch.testing.assert_close(elbo.kl, q.log_prob(z) - model.p_z().log_prob(z))
    assert elbo.kl_per_dim is None
    for gradient in ("reparam", "dreg"):
        torch.manual_seed(5)
        iwae = IWAE(1, gradient)(model, x)
        torch.testing.assert_close(iwae.total, elbo.total)
        iwae.loss.backward()
    assert torch.isfinite(torch.cat([p.grad.flatten() for p in model.prior.parameters()])).all()


# --- the CLI ----------------------------------------------------------------------------------


def test_list_names_every_new_family(run_cli):
    result = run_cli("list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert set(NEW_LIKELIHOODS) <= {entry["name"] for entry in listing["likelihoods"]}
    assert set(NEW_PRIORS) <= {entry["name"] for entry in listing["priors"]}
    assert set(NEW_LIKELIHOODS) <= set(LIKELIHOODS.names()) and set(NEW_PRIORS) <= set(PRIORS.names())


@pytest.mark.parametrize("key, name", [("likelihood", n) for n in NEW_LIKELIHOODS] + [("prior", n) for n in NEW_PRIORS])
def test_each_family_trains_one_epoch_and_evaluates_its_nll(run_cli, tmp_path, key, name):
    run = tmp_path / name
    overrides = [*TINY, "train.epochs=1", f"model.{key}={name}", "model.prior_components=4"]
    trained = run_cli("train", "--out", run, "--no-figures", *set_args(overrides))
    assert trained.returncode == 0, trained.stderr
    evaluated = run_cli(
        "eval", run, "--nll", "--k", "20", "--limit", "50", "--fd-samples", "50", "--json", "--threads", "1"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["images"] == 50 and result["k"] == 20
    assert math.isfinite(result["nll"]) and math.isfinite(result["total"])
    if key == "prior":  # a 2-D latent model: the manifold and the scatter are drawn too
        plotted = run_cli("plot", run)
        assert plotted.returncode == 0, plotted.stderr
        for figure in ("latent_manifold.png", "latent_scatter.png", "samples.png"):
            assert (run / "figures" / figure).stat().st_size > 0


def test_data_mean_with_the_logistic_mixture_is_one_error_line(run_cli, tmp_path):
    overrides = [*TINY, "train.epochs=1", "model.likelihood=logistic-mixture", "model.decoder_bias=data-mean"]
    result = run_cli("train", "--out", tmp_path / "run", "--no-figures", *set_args(overrides))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model.decoder_bias = data-mean is not available for the logistic-mixture likelihood "
        "(its mean is not one decoder output); use model.decoder_bias = default"
    )
    assert not (tmp_path / "run" / "model.json").exists()


@pytest.mark.parametrize(("prior", "posterior"), [("mog", "diagonal"), ("vamp", "diagonal"), ("vamp", "full")])
def test_mixture_priors_log_density_and_its_gradients_are_torchs(prior, posterior):
    """The mixture's own log_prob (fewer passes over the B x K x d tensor) against torch's MixtureSameFamily."""
    from torch.distributions import MixtureSameFamily

    model = _model(prior=prior, posterior=posterior, prior_components=7)
    z = torch.randn(3, 4, 2) * 2  # k x B x d, as the importance weights ask
    ours = model.p_z().log_prob(z)
    p = model.p_z()  # a graph of its own
    torchs = MixtureSameFamily(p.mixture_distribution, p.component_distribution, validate_args=False).log_prob(z)
    torch.testing.assert_close(ours, torchs)
    params = [q for q in model.parameters() if q.requires_grad]
    grads = torch.autograd.grad(ours.sum(), params, allow_unused=True)
    expected = torch.autograd.grad(torchs.sum(), params, allow_unused=True)
    for a, b in zip(grads, expected):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
