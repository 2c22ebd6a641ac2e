"""Posterior families and their protocol, each checked against an independent computation:
torch.distributions, a Monte Carlo estimate, or a brute-force change of variables."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from tests.conftest import TINY, set_args
from vaelab import VaelabError
from vaelab.config import ModelConfig, RunConfig, apply_overrides
from vaelab.distributions.kl import kl_terms
from vaelab.distributions.posteriors import (
    DiagonalGaussian,
    DiagonalGaussianStudySampling,
    FullCovarianceGaussian,
    InverseAutoregressiveFlow,
    StudyCholeskySample,
)
from vaelab.distributions.priors import CorrelatedGaussian, LearnableGaussian, StandardNormal
from vaelab.model import Context, Shard, build_vae, load_model, save_model


def _full_params(batch: int, d: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, FullCovarianceGaussian(d).param_size(d), generator=generator, dtype=torch.float64)


def _iaf(d: int, steps: int = 2, hidden: int = 8, seed: int = 0) -> InverseAutoregressiveFlow:
    """An IAF posterior in float64 whose weights are random and large enough that every step bends z."""
    torch.manual_seed(seed)
    flow = InverseAutoregressiveFlow(d, steps, hidden).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.7)
    return flow


# --- full covariance ---------------------------------------------------------------------------------


def test_full_posterior_reads_its_parameters_as_mu_log_diagonal_and_lower_triangle():
    d = 3
    family = FullCovarianceGaussian(d)
    assert family.param_size(d) == d + d * (d + 1) // 2 == 9
    params = torch.tensor([[1.0, 2.0, 3.0, math.log(2.0), 0.0, math.log(0.5), 4.0, 5.0, 6.0]])
    q = family(params)
    expected = torch.tensor([[2.0, 0.0, 0.0], [4.0, 1.0, 0.0], [5.0, 6.0, 0.5]])  # the lower triangle row by row
    torch.testing.assert_close(q.scale_tril[0], expected)
    torch.testing.assert_close(q.mean, params[:, :3])
    torch.testing.assert_close(q.covariance_matrix[0], expected @ expected.T)


def test_full_log_prob_matches_torch_for_its_own_and_any_sample():
    g = torch.Generator().manual_seed(0)
    d, batch = 4, 5
    q = FullCovarianceGaussian(d)(_full_params(batch, d, g))
    reference = MultivariateNormal(q.loc, covariance_matrix=q.scale_tril @ q.scale_tril.transpose(-1, -2))
    eps = torch.randn(7, batch, d, generator=g, dtype=torch.float64)
    z, log_q = q.reparameterize(eps)
    assert z.shape == (7, batch, d) and log_q.shape == (7, batch)
    torch.testing.assert_close(log_q, reference.log_prob(z), rtol=1e-10, atol=1e-10)
    elsewhere = torch.randn(3, batch, d, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(q.log_prob(elsewhere), reference.log_prob(elsewhere), rtol=1e-10, atol=1e-10)


def test_full_samples_have_the_covariance_L_L_transpose():
    g = torch.Generator().manual_seed(1)
    d = 3
    q = FullCovarianceGaussian(d)(_full_params(1, d, g))
    torch.manual_seed(0)
    z, _ = q.rsample_and_log_prob((200_000,))
    z = z[:, 0]
    covariance = q.scale_tril[0] @ q.scale_tril[0].T
    # the standard error of a covariance entry is about sqrt(2 / n) times the variances: 0.003 here
    torch.testing.assert_close(z.mean(0), q.loc[0], atol=0.03 * covariance.diagonal().max().sqrt().item(), rtol=0)
    torch.testing.assert_close(torch.cov(z.T), covariance, atol=0.02 * covariance.diagonal().max().item(), rtol=0)


def _monte_carlo_kl(q, p, n: int = 400_000) -> tuple[torch.Tensor, torch.Tensor]:
    """E_q[log q(z) - log p(z)] from n samples, and its standard error."""
    torch.manual_seed(0)
    z, log_q = q.rsample_and_log_prob((n,))
    ratio = log_q - p.log_prob(z)
    return ratio.mean(0), ratio.std(0) / math.sqrt(n)


def _priors(d: int, g: torch.Generator):
    learnable = LearnableGaussian(d).double()
    with torch.no_grad():
        learnable.loc.normal_(generator=g)
        learnable.log_scale.normal_(0, 0.5, generator=g)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    correlated = CorrelatedGaussian(a @ a.T + 0.5 * torch.eye(d)).double()
    return {"standard": StandardNormal(d).double()(), "learnable": learnable(), "correlated": correlated()}


@pytest.mark.parametrize("prior", ["standard", "learnable", "correlated"])
def test_kl_of_the_full_posterior_is_closed_form_and_agrees_with_monte_carlo(prior):
    g = torch.Generator().manual_seed(2)
    d, batch = 3, 4
    q = FullCovarianceGaussian(d)(_full_params(batch, d, g) * 0.5)
    p = _priors(d, g)[prior]
    kl, per_dim = kl_terms(q, p)  # raises NotImplementedError where no closed form is registered
    assert kl.shape == (batch,) and per_dim is None
    # the same KL through torch's full-against-full rule, the prior written as a full covariance
    p_full = MultivariateNormal(
        p.mean, covariance_matrix=p.covariance_matrix if prior == "correlated" else torch.diag_embed(p.variance)
    )
    q_full = MultivariateNormal(q.loc, scale_tril=q.scale_tril)
    torch.testing.assert_close(kl, kl_divergence(q_full, p_full), rtol=1e-10, atol=1e-10)
    estimate, standard_error = _monte_carlo_kl(q, p)
    assert ((kl - estimate).abs() < 5 * standard_error + 1e-3).all(), (kl, estimate, standard_error)


def test_the_diagonal_rule_against_a_full_posterior_refuses_other_priors():
    from vaelab.distributions.kl import kl_full_normal_diagonal_normal

    q = FullCovarianceGaussian(2)(torch.zeros(1, 5))
    with pytest.raises(NotImplementedError):
        kl_full_normal_diagonal_normal(q, Independent(Normal(torch.zeros(2, 2), 1.0), 2))


def test_full_posterior_detached_passes_gradient_to_z_only():
    params = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    q = FullCovarianceGaussian(3)(params)
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    log_q = q.detached().log_prob(z)
    torch.testing.assert_close(log_q, q.log_prob(z))
    log_q.sum().backward()
    assert params.grad is None and z.grad is not None and z.grad.abs().sum() > 0


# --- diagonal: today's sampling, bitwise ----------------------------------------------------------


def test_diagonal_samples_are_bitwise_torchs_rsample_for_the_same_seed():
    params = torch.randn(5, 6)
    mu, sigma = params[:, :3], torch.exp(0.5 * params[:, 3:])
    reference = Independent(Normal(mu, sigma), 1)
    torch.manual_seed(7)
    expected = reference.rsample((4,))
    q = DiagonalGaussian()(params)
    torch.manual_seed(7)
    z, log_q = q.rsample_and_log_prob((4,))
    torch.manual_seed(7)
    assert torch.equal(q.rsample((4,)), expected)
    assert torch.equal(z, expected)
    assert torch.equal(log_q, reference.log_prob(expected))
    eps = torch.randn(4, 5, 3)
    assert torch.equal(q.reparameterize(eps)[0], mu + eps * sigma)
    assert torch.equal(q.detached().log_prob(z), log_q)


def test_study_sampler_keeps_its_noise_stream_and_its_density():
    mu, sigma = torch.randn(6, 2), torch.rand(6, 2) + 0.1
    L = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    q = DiagonalGaussianStudySampling(L)(torch.cat([mu, 2 * sigma.log()], -1))
    assert isinstance(q, StudyCholeskySample)
    torch.manual_seed(3)
    eps = torch.randn(3, 6, 2)  # what the study's sampler drew
    torch.manual_seed(3)
    z, log_q = q.rsample_and_log_prob((3,))
    torch.testing.assert_close(z, q.loc + eps @ L.T, rtol=0, atol=0)
    torch.testing.assert_close(log_q, Independent(Normal(q.loc, q.scale), 1).log_prob(z), rtol=0, atol=0)
    # its proposal for importance sampling is the density log_q belongs to: samples of N(mu, diag sigma^2)
    torch.manual_seed(3)
    z, log_q = q.proposal().rsample_and_log_prob((3,))
    torch.testing.assert_close(z, q.loc + eps * q.scale, rtol=0, atol=0)
    torch.testing.assert_close(log_q, q.log_prob(z), rtol=0, atol=0)
    plain = DiagonalGaussian()(torch.zeros(1, 4))
    assert plain.proposal() is plain


@pytest.mark.parametrize("family", ["diagonal", "full", "iaf"])
def test_rows_of_a_sharded_batch_get_the_noise_of_the_whole_batch(family):
    torch.manual_seed(0)
    posterior = {
        "diagonal": DiagonalGaussian(),
        "full": FullCovarianceGaussian(2),
        "iaf": InverseAutoregressiveFlow(2, 2, 8),
    }[family]
    params = torch.randn(7, posterior.param_size(2))
    torch.manual_seed(3)
    whole = posterior(params).rsample((2,))
    torch.manual_seed(3)
    eps = Context(shard=Shard(2, 5, 7)).noise((2, 3, 2), params)  # the data-parallel noise protocol
    part = posterior(params[2:5]).reparameterize(eps)[0]
    torch.testing.assert_close(part, whole[:, 2:5], rtol=0, atol=1e-6)


# --- inverse autoregressive flow ------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_iaf_log_q_is_the_change_of_variables_density(steps):
    """log q(z) = log N(eps) - log |det dz/deps|, the Jacobian taken by autograd, one image at a time."""
    d = 4
    flow = _iaf(d, steps)
    g = torch.Generator().manual_seed(5)
    params = torch.randn(3, flow.param_size(d), generator=g, dtype=torch.float64)
    q = flow(params)
    eps = torch.randn(3, d, generator=g, dtype=torch.float64)
    _, log_q = q.reparameterize(eps)
    for i in range(3):
        q_i = flow(params[i : i + 1])
        J = jacobian(lambda e, q_i=q_i: q_i.reparameterize(e[None])[0][0], eps[i])
        log_normal = Normal(0.0, 1.0).log_prob(eps[i]).sum()
        torch.testing.assert_close(log_q[i], log_normal - torch.linalg.slogdet(J).logabsdet, rtol=1e-10, atol=1e-10)


def test_each_iaf_step_is_autoregressive_in_its_ordering():
    """dz'_i/dz_j = 0 for every j after i in the step's ordering (the first step's ordering is 1..d,
    the next one's reversed), while the entries before i are not all zero (the step does mix)."""
    d = 5
    flow = _iaf(d, steps=2)
    h = torch.randn(flow.context_size, dtype=torch.float64)
    z = torch.randn(d, dtype=torch.float64)
    lower = torch.tril(torch.ones(d, d, dtype=torch.bool), diagonal=-1)
    for t, step in enumerate(flow.steps):
        J = jacobian(lambda v, step=step: step(v, h)[0], z)
        before = lower if t % 2 == 0 else lower.T  # (i, j) with j before i in this step's ordering
        after = ~before & ~torch.eye(d, dtype=torch.bool)
        assert (J[after] == 0).all(), (t, J)
        assert (J[before] != 0).all(), (t, J)
        # the diagonal is sigma, whose logs sum to the step's log-determinant
        torch.testing.assert_close(J.diagonal().log().sum(), step(z, h)[1])


def test_a_one_step_flow_maps_noise_to_z_triangularly():
    d = 4
    flow = _iaf(d, steps=1)
    q = flow(torch.randn(1, flow.param_size(d), dtype=torch.float64))
    J = jacobian(lambda e: q.reparameterize(e[None])[0][0], torch.randn(d, dtype=torch.float64))
    assert (torch.triu(J, diagonal=1) == 0).all()


def test_iaf_mean_density_and_dreg_say_what_they_are():
    d = 3
    flow = _iaf(d)
    q = flow(torch.randn(2, flow.param_size(d), dtype=torch.float64))
    torch.testing.assert_close(q.mean, q.reparameterize(torch.zeros(2, d, dtype=torch.float64))[0])
    with pytest.raises(NotImplementedError, match="inverted"):
        q.log_prob(torch.zeros(2, d, dtype=torch.float64))
    with pytest.raises(
        VaelabError, match="objective.gradient = dreg is not available for model.posterior = iaf; use reparam"
    ):
        q.detached()
    # the KL against any prior is left to the objective's estimate log q(z) - log p(z)
    with pytest.raises(NotImplementedError):
        kl_terms(q, StandardNormal(d).double()())


def test_iaf_reparameterized_gradient_reaches_encoder_and_flow():
    d = 3
    flow = _iaf(d)
    params = torch.randn(2, flow.param_size(d), dtype=torch.float64, requires_grad=True)
    z, log_q = flow(params).rsample_and_log_prob((4,))
    (z.sum() + log_q.sum()).backward()
    assert params.grad.abs().sum(0).gt(0).all()  # mu, log sigma^2 and every context number
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


# --- registration, config and the saved model --------------------------------------------------------


def test_the_flow_is_saved_and_loaded_with_the_model(tmp_path):
    config = apply_overrides(
        RunConfig(),
        [
            "model.arch=mlp",
            "model.hidden=[16]",
            "model.latent_dim=3",
            "model.posterior=iaf",
            "model.flow_steps=3",
            "model.flow_hidden=10",
        ],
    )
    model = build_vae(config.model, (1, 8, 8))
    keys = [k for k in model.state_dict() if k.startswith("posterior.")]
    assert len({k.split(".")[2] for k in keys}) == 3 and not any(k.endswith("mask") for k in keys)
    with torch.no_grad():
        for p in model.posterior.parameters():
            p.add_(torch.randn_like(p))
    save_model(model, tmp_path, config)
    loaded, _, _ = load_model(tmp_path)
    x = torch.rand(2, 1, 8, 8)
    eps = torch.randn(2, 3)
    for a, b in zip(model.eval().q_z(x).reparameterize(eps), loaded.q_z(x).reparameterize(eps)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.posterior=full", "model.prior=correlated", "model.prior_sampling=study"], "prior_sampling = study"),
        (["model.posterior=iaf", "model.prior=correlated", "model.prior_sampling=study"], "prior_sampling = study"),
        (["model.posterior=iaf", "model.prior=vamp"], "model.prior = vamp"),
    ],
)
def test_combinations_a_posterior_cannot_serve_are_refused_when_built(overrides, needle):
    config = apply_overrides(RunConfig(), ["model.arch=mlp", "model.hidden=[8]", *overrides])
    with pytest.raises(VaelabError, match=needle):
        build_vae(config.model, (1, 8, 8))


@pytest.mark.parametrize(
    "key, value", [("flow_steps", 0), ("flow_steps", 65), ("flow_hidden", -1), ("flow_hidden", 10**6)]
)
def test_flow_sizes_out_of_range_are_refused(key, value):
    with pytest.raises(VaelabError, match=f"model.{key}"):
        ModelConfig(**{key: value}).validate()


@pytest.mark.parametrize("family", ["full", "iaf"])
def test_the_encoder_gives_each_family_its_parameters(family):
    config = apply_overrides(
        RunConfig(), ["model.arch=mlp", "model.hidden=[8]", "model.latent_dim=4", f"model.posterior={family}"]
    )
    model = build_vae(config.model, (1, 8, 8))
    q = model.q_z(torch.rand(3, 1, 8, 8))
    z, log_q = q.rsample_and_log_prob((5,))
    assert z.shape == (5, 3, 4) and log_q.shape == (5, 3) and torch.isfinite(log_q).all()
    assert model.encode(torch.rand(3, 1, 8, 8)).shape == (3, 4)


# --- the CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["full", "iaf"])
def test_each_posterior_trains_one_epoch_and_evaluates_its_nll(run_cli, tmp_path, family):
    run = tmp_path / family
    trained = run_cli(
        "train", "--out", run, "--no-figures", *set_args([*TINY, "train.epochs=1", f"model.posterior={family}"])
    )
    assert trained.returncode == 0, trained.stderr
    evaluated = run_cli("eval", run, "--nll", "--k", "20", "--limit", "50", "--json", "--threads", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["images"] == 50 and result["k"] == 20
    assert math.isfinite(result["nll"]) and math.isfinite(result["total"])
    plotted = run_cli("plot", run)  # a 2-D latent model: the scatter and the manifold use encode / decode
    assert plotted.returncode == 0, plotted.stderr
    for figure in ("latent_manifold.png", "latent_scatter.png"):
        assert (run / "figures" / figure).stat().st_size > 0


def test_the_full_posterior_trains_with_the_doubly_reparameterised_gradient(run_cli, tmp_path):
    overrides = [*TINY, "train.epochs=1", "model.posterior=full", "objective.name=iwae", "objective.k=4"]
    result = run_cli(
        "train", "--out", tmp_path / "run", "--no-figures", *set_args([*overrides, "objective.gradient=dreg"])
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "model.json").exists()


def test_dreg_with_the_flow_is_one_error_line_and_leaves_nothing(run_cli, tmp_path):
    overrides = [*TINY, "train.epochs=1", "model.posterior=iaf", "objective.name=iwae", "objective.k=4"]
    result = run_cli(
        "train", "--out", tmp_path / "run", "--no-figures", *set_args([*overrides, "objective.gradient=dreg"])
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: objective.gradient = dreg is not available for model.posterior = iaf; use reparam"
    )
    assert not (tmp_path / "run").exists()
