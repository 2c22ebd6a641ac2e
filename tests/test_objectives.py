"""Objectives: the analytic-KL ELBO against a Monte-Carlo estimate, IWAE, beta and free bits."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.config import ModelConfig
from vaelab.model import ELBO, IWAE, Context, build_vae, make_objective

# encoder output (mu, log sigma^2) pushed well away from the prior, so that the KL is several nats
# and a wrong KL formula cannot hide inside the Monte-Carlo noise
POSTERIOR_BIAS = [1.0, -1.0, -2.0, -1.0]
B = 3  # images


def _model(prior: str = "standard", seed: int = 0):
    torch.manual_seed(seed)
    model = build_vae(ModelConfig(arch="mlp", hidden=[32], latent_dim=2, prior=prior), (1, 28, 28))
    last = model.encoder.net[-1][-1]
    assert isinstance(last, torch.nn.Linear) and last.out_features == 4
    with torch.no_grad():
        last.weight.mul_(0.05)
        last.bias.copy_(torch.tensor(POSTERIOR_BIAS))
    return model


@pytest.fixture(scope="module")
def x(mnist):
    return mnist.x_test[:B].float() / 255


def _mean_se(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over the first dimension, in float64."""
    samples = samples.double()
    return samples.mean(0), samples.std(0) / math.sqrt(len(samples))


def _monte_carlo_elbo(model, x, samples: int) -> torch.Tensor:
    """S x B single-sample estimates of log p(x|z) + log p(z) - log q(z|x), z ~ q."""
    q = model.q_z(x)
    z = q.rsample((samples,))
    return model.p_x(z).log_prob(x) + model.p_z().log_prob(z) - q.log_prob(z)


def _elbo_objective_samples(objective, model, x, samples: int) -> torch.Tensor:
    """S x B draws of the objective's bound (-total), each with fresh noise."""
    terms = objective(model, x.repeat(samples, 1, 1, 1))
    return -terms.total.reshape(samples, len(x))


@pytest.mark.parametrize("prior", ["standard", "correlated"])
@torch.no_grad()
def test_analytic_elbo_matches_monte_carlo(prior, x):
    model = _model(prior)
    torch.manual_seed(1)
    s = 4000
    analytic, analytic_se = _mean_se(_elbo_objective_samples(ELBO(), model, x, s))
    mc, mc_se = _mean_se(_monte_carlo_elbo(model, x, s))
    tolerance = 4 * torch.sqrt(analytic_se**2 + mc_se**2)
    assert (tolerance < 1.0).all(), "too noisy to be a test"
    assert ((analytic - mc).abs() < tolerance).all(), (analytic, mc, tolerance)


@pytest.mark.parametrize("prior", ["standard", "correlated"])
@torch.no_grad()
def test_closed_form_kl_matches_monte_carlo(prior, x):
    """The KL part alone: closed form against the mean of log q(z|x) - log p(z) over z ~ q."""
    model = _model(prior)
    torch.manual_seed(2)
    terms = ELBO()(model, x)
    q, p = model.q_z(x), model.p_z()
    z = q.rsample((20000,))
    mc, se = _mean_se(q.log_prob(z) - p.log_prob(z))
    assert (terms.kl > 1.0).all(), terms.kl  # big enough that a formula error shows
    assert ((terms.kl.double() - mc).abs() < 4 * se + 1e-4).all(), (terms.kl, mc, se)
    if prior == "standard":
        assert terms.kl_per_dim is not None and terms.kl_per_dim.shape == (B, 2)
        torch.testing.assert_close(terms.kl_per_dim.sum(-1), terms.kl)
    else:
        assert terms.kl_per_dim is None


@torch.no_grad()
def test_terms_add_up(x):
    model = _model()
    terms = ELBO()(model, x)
    assert terms.total.shape == terms.reconstruction.shape == terms.kl.shape == (B,)
    torch.testing.assert_close(terms.total, terms.reconstruction + terms.kl)
    torch.testing.assert_close(terms.loss, terms.total.mean())  # beta = 1: the loss is the -ELBO
    # reconstruction is -log p(x|z) of one sample, in nats summed over 784 pixels
    assert (terms.reconstruction > 0).all() and (terms.reconstruction < 784 * 5).all()


@pytest.mark.parametrize("prior", ["standard", "correlated"])
@torch.no_grad()
def test_iwae_k1_is_the_elbo_in_expectation(prior, x):
    model = _model(prior)
    torch.manual_seed(3)
    s = 4000
    elbo, elbo_se = _mean_se(_elbo_objective_samples(ELBO(), model, x, s))
    iwae, iwae_se = _mean_se(_elbo_objective_samples(IWAE(1), model, x, s))
    assert ((elbo - iwae).abs() < 4 * torch.sqrt(elbo_se**2 + iwae_se**2)).all(), (elbo, iwae)


@torch.no_grad()
def test_iwae_grows_with_k(x):
    model = _model()
    torch.manual_seed(4)
    r = 150  # independent repetitions of each bound
    means, errors = [], []
    for k in (1, 10, 100):
        mean, se = _mean_se(_elbo_objective_samples(IWAE(k), model, x, r))
        means.append(mean.mean())
        errors.append(se.pow(2).mean().sqrt())
    for (m_small, e_small), (m_big, e_big) in zip(zip(means, errors), zip(means[1:], errors[1:])):
        assert m_big > m_small + 3 * math.hypot(e_small, e_big), means
    # and the k = 100 bound is still a bound below log p(x): no larger than a much tighter one
    big, _ = _mean_se(_elbo_objective_samples(IWAE(1000), model, x, 4))
    assert means[-1] <= big.mean() + 0.05


@torch.no_grad()
def test_iwae_matches_logmeanexp_of_weights(x):
    model = _model()
    k = 7
    torch.manual_seed(5)
    terms = IWAE(k)(model, x)
    torch.manual_seed(5)
    q = model.q_z(x)
    z = q.rsample((k,))
    log_w = model.p_x(z).log_prob(x) + model.p_z().log_prob(z) - q.log_prob(z)
    expected = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(-terms.total, expected)
    torch.testing.assert_close(terms.loss, -expected.mean())


def test_make_objective():
    assert isinstance(make_objective("iwae", k=5), IWAE) and make_objective("iwae", k=5).k == 5
    assert make_objective("iwae", k=5, gradient="dreg").gradient == "dreg"
    with pytest.raises(ValueError, match="unknown IWAE gradient"):
        IWAE(5, "score")
    elbo = make_objective("elbo", beta=0.5, free_bits=0.1)
    assert isinstance(elbo, ELBO) and elbo.beta == 0.5 and elbo.free_bits == 0.1


@torch.no_grad()
def test_beta_scales_the_kl_part_of_the_loss(x):
    model = _model()
    results = {}
    for beta in (0.0, 1.0, 3.0):
        torch.manual_seed(6)  # the same z for every beta
        results[beta] = ELBO(beta=beta)(model, x)
    base = results[0.0]
    torch.testing.assert_close(base.loss, base.reconstruction.mean())
    for beta in (1.0, 3.0):
        torch.testing.assert_close(results[beta].loss, base.reconstruction.mean() + beta * base.kl.mean())
        # what is reported is the true bound, whatever beta is optimised
        torch.testing.assert_close(results[beta].total, base.total)
    # the KL warm-up weight multiplies beta
    torch.manual_seed(6)
    warm = ELBO(beta=3.0)(model, x, Context(kl_weight=0.25))
    torch.testing.assert_close(warm.loss, base.reconstruction.mean() + 0.75 * base.kl.mean())


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_free_bits_clamps_per_dimension(x):
    model = _model()
    torch.manual_seed(7)
    plain = ELBO()(model, x)
    kl_dim_mean = plain.kl_per_dim.detach().mean(0)  # about 2.6 nats in z0, 0.4 in z1
    threshold = float(kl_dim_mean.mean())  # between the two
    assert kl_dim_mean.min() < threshold < kl_dim_mean.max()
    torch.manual_seed(7)
    clamped = ELBO(free_bits=threshold)(model, x)
    expected = plain.reconstruction.mean() + kl_dim_mean.clamp(min=threshold).sum()
    torch.testing.assert_close(clamped.loss, expected)
    assert clamped.loss > plain.loss  # the clamped dimension costs more than its KL
    torch.testing.assert_close(clamped.total, plain.total)  # reporting is unaffected

    # a budget below every dimension's KL changes nothing
    torch.manual_seed(7)
    torch.testing.assert_close(ELBO(free_bits=1e-3)(model, x).loss, plain.loss)


def test_free_bits_above_the_kl_removes_its_gradient(x):
    model = _model()
    torch.manual_seed(8)
    clamped = ELBO(free_bits=50.0)(model, x)
    torch.testing.assert_close(clamped.loss, clamped.reconstruction.mean() + 2 * 50.0)
    clamped_grads = _grads(model, clamped.loss)
    torch.manual_seed(8)
    reconstruction_only = ELBO(beta=0.0)(model, x)
    expected_grads = _grads(model, reconstruction_only.loss)
    assert clamped_grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(clamped_grads[name], expected_grads[name], msg=name)


@torch.no_grad()
def test_free_bits_with_correlated_prior_clamps_the_whole_kl(x):
    model = _model("correlated")
    torch.manual_seed(9)
    plain = ELBO()(model, x)
    torch.manual_seed(9)
    clamped = ELBO(free_bits=50.0)(model, x)
    torch.testing.assert_close(clamped.loss, plain.reconstruction.mean() + 2 * 50.0)
    torch.manual_seed(9)
    torch.testing.assert_close(ELBO(free_bits=1e-3)(model, x).loss, plain.loss)


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("prior", ["standard", "correlated"])
def test_dreg_gradients_follow_tucker_et_al(prior, x):
    """DReG written out by hand: the encoder gets sum_i w~_i^2 d log w_i/d phi through z alone (q's
    parameters fixed inside log w), the decoder and prior get the plain IWAE gradient."""
    model, k = _model(prior), 6
    torch.manual_seed(7)
    dreg = _grads(model, IWAE(k, "dreg")(model, x).loss)
    torch.manual_seed(7)
    plain = _grads(model, IWAE(k)(model, x).loss)

    torch.manual_seed(7)
    q = model.q_z(x)
    z = q.rsample((k,))
    q_fixed = torch.distributions.Independent(
        torch.distributions.Normal(q.base_dist.loc.detach(), q.base_dist.scale.detach()), 1
    )
    log_w = model.p_x(z).log_prob(x) + model.p_z().log_prob(z) - q_fixed.log_prob(z)
    w = torch.softmax(log_w.detach(), 0)
    by_hand = _grads(model, -(w**2 * log_w).sum(0).mean())

    assert dreg.keys() == plain.keys()
    for name, grad in dreg.items():
        expected = by_hand[name] if name.startswith("encoder.") else plain[name]
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6, msg=name)
    # and the encoder's gradient really differs from the plain estimator's
    assert any(not torch.allclose(dreg[n], plain[n]) for n in dreg if n.startswith("encoder."))


def test_dreg_is_unbiased(x):
    """Per image, both estimators of the gradient w.r.t. the encoder's output (mu, log sigma^2) of
    the k = 20 bound agree in expectation. (Which one is less noisy depends on how well q fits the
    posterior -- DReG's advantage is asymptotic in k -- so that is measured in training, not here.)"""
    model, k, reps = _model(), 20, 4000
    images = x[:1].repeat(reps, 1, 1, 1)  # each row an independent estimate for the same image
    outputs = []
    model.encoder.register_forward_hook(lambda module, args, out: outputs.append(out))
    per_row = {}
    for gradient in ("reparam", "dreg"):
        torch.manual_seed(8)
        terms = IWAE(k, gradient)(model, images)
        # the loss is a mean over rows, each row's encoder output feeds only that row
        (grad,) = torch.autograd.grad(terms.loss * reps, outputs.pop())
        per_row[gradient] = grad.double()
    mean = {g: v.mean(0) for g, v in per_row.items()}
    se = {g: v.std(0) / math.sqrt(reps) for g, v in per_row.items()}
    assert ((mean["dreg"] - mean["reparam"]).abs() < 4 * torch.sqrt(se["dreg"] ** 2 + se["reparam"] ** 2)).all()
    assert (se["dreg"] > 0).all() and not torch.allclose(per_row["dreg"], per_row["reparam"])


# --- the capacity objective's per-part settings ------------------------------------------------

PARTS = ["objective.name='capacity'", "objective.capacity_parts=['continuous', 'categorical']"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["objective.capacity_parts=['continuous']"],
            "objective.capacity_parts applies to objective.name = capacity; it means nothing for elbo",
        ),
        (
            ["objective.name='btcvae'", "objective.capacity_part_max=[5.0]"],
            "objective.capacity_part_max applies to objective.name = capacity",
        ),
        (
            [*PARTS[:1], "objective.capacity_parts=['continuous', 'continuous']"],
            "objective.capacity_parts names continuous twice; give each KL part once",
        ),
        (
            [*PARTS, "objective.capacity_part_max=[5.0]"],
            "objective.capacity_part_max gives 1 values for the 2 parts of objective.capacity_parts: one per part, "
            "or none (objective.capacity_max for every part)",
        ),
        (
            [*PARTS[:1], "objective.capacity_part_steps=[100, 100]"],
            "objective.capacity_part_steps gives 2 values for the 0 parts",
        ),
        ([*PARTS, "objective.capacity_part_gamma=[30.0, -1.0]"], "objective.capacity_part_gamma must be >= 0"),
        ([*PARTS, "objective.capacity_part_steps=[100, -5]"], "objective.capacity_part_steps must be >= 0"),
        ([*PARTS, "objective.capacity_part_max=[5.0, 'a']"], "objective.capacity_part_max must be of type float"),
        ([*PARTS, "objective.capacity_part_max=[5.0, nan]"], "objective.capacity_part_max must be a finite number"),
        (["objective.name='capacity'", "objective.capacity_parts='continuous'"], "must be a list"),
    ],
)
def test_bad_per_part_capacities_are_refused_in_one_line(overrides, message):
    from vaelab.config import RunConfig, apply_overrides
    from vaelab.errors import VaelabError

    with pytest.raises(VaelabError) as refused:
        apply_overrides(RunConfig(), overrides)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_per_part_capacities_round_trip_through_toml(tmp_path):
    from vaelab.config import RunConfig, apply_overrides

    config = apply_overrides(
        RunConfig(),
        [
            *PARTS,
            "objective.gamma=30",
            "objective.capacity_part_max=[5.0, 2.3]",
            "objective.capacity_part_gamma=[30, 10]",
            "objective.capacity_part_steps=[25000, 12000]",
        ],
    )
    config.save(tmp_path / "config.toml")
    text = (tmp_path / "config.toml").read_text()
    assert 'capacity_parts = [\n    "continuous",\n    "categorical",\n]' in text  # a [objective] key like any other
    loaded = RunConfig.load(tmp_path / "config.toml")
    assert loaded == config and loaded.objective.capacity_part_gamma == [30.0, 10.0]
    assert isinstance(loaded.objective.capacity_part_gamma[1], float)  # an integer in TOML is read as the float it is
    # a config written before these keys existed reads as one capacity on the whole KL
    (tmp_path / "old.toml").write_text('[objective]\nname = "capacity"\ngamma = 1000.0\n')
    assert RunConfig.load(tmp_path / "old.toml").objective.capacity_parts == []


@torch.no_grad()
def test_one_capacity_on_the_whole_kl_is_unchanged(x):
    """Without capacity_parts the loss is, bit for bit, Burgess et al.'s: recon + gamma |mean KL - C|."""
    from vaelab.model import CapacityELBO

    model = _model()
    objective = make_objective("capacity", gamma=100.0, capacity_max=20.0, capacity_steps=40)
    assert isinstance(objective, CapacityELBO) and objective.parts == {}
    torch.manual_seed(7)
    terms = objective(model, x, Context(step=10))
    torch.manual_seed(7)
    parts = model.elbo(x, Context())
    expected = parts.reconstruction.mean() + 100.0 * 1.0 * (parts.kl.mean() - 5.0).abs() + 0.0
    assert torch.equal(terms.loss, expected)
