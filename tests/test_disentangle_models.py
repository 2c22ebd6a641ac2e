"""The disentanglement models: the capacity-annealed beta-VAE, beta-TCVAE, FactorVAE and the 64x64 conv pair.

Each objective's value is checked against a direct computation on a tiny batch, FactorVAE's gradients
part by part, and each model trains a few steps through ``vaelab train`` on small 64x64 binary images.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F

from tests.conftest import set_args
from vaelab.config import ModelConfig, ObjectiveConfig, RunConfig, apply_overrides
from vaelab.core.registry import ARCHITECTURES, FAMILIES, OBJECTIVES
from vaelab.errors import VaelabError
from vaelab.model import BetaTCVAE, CapacityELBO, Context, Shard, Unsupported, build_model, make_objective
from vaelab.model.base import Terms
from vaelab.model.factorvae import FactorVAE, permute_dims
from vaelab.model.factorvae.model import DISCRIMINATOR_BETAS
from vaelab.model.objectives import build_objective
from vaelab.nets.conv64 import Conv64Decoder, Conv64Encoder

SHAPE = (1, 64, 64)
D = 3  # latent dimensions of the tiny models


def noise(n: int, seed: int = 0) -> Context:
    """A context whose noise is fixed per example, so two calls see the same z."""
    return Context(generators=[torch.Generator().manual_seed(seed + i) for i in range(n)])


def tiny(family: str = "vae", **keys) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(family=family, arch="mlp", hidden=[16], latent_dim=D, **keys)
    return build_model(config, (1, 8, 8))


def squares(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """n binary images (0 / 255), each a white square of side 8 to 16 at a random place: a little dSprites."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), dtype=np.uint8)
    for image in images:
        side = rng.integers(8, 17)
        top, left = rng.integers(0, size - side, 2)
        image[top : top + side, left : left + side] = 255
    return images


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """A folder of x_train.npy, y_train.npy, x_test.npy, y_test.npy: 96 + 32 squares, 64x64."""
    folder = tmp_path_factory.mktemp("squares")
    for split, n, seed in (("train", 96, 0), ("test", 32, 1)):
        np.save(folder / f"x_{split}.npy", squares(n, seed))
        np.save(folder / f"y_{split}.npy", np.zeros(n, dtype=np.int64))
    return folder


# --- the 64x64 architecture --------------------------------------------------------------------


def test_conv64_is_the_papers_architecture_and_keeps_the_image_size():
    encoder, decoder = ARCHITECTURES.get("conv64")(ModelConfig(latent_dim=10), (3, 64, 64), 20, 3)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    dense = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(64 * 4 * 4, 256), (256, 20)]
    deconvs = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in deconvs] == [64, 32, 32, 3]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in deconvs)
    assert [m.out_features for m in decoder.modules() if isinstance(m, nn.Linear)] == [256, 64 * 4 * 4]
    x = torch.rand(5, 3, 64, 64)
    assert encoder(x).shape == (5, 20)
    assert decoder(torch.randn(5, 10)).shape == (5, 3, 64, 64)


def test_mlp_tcvae_is_chen_et_als_pair():
    encoder, decoder = ARCHITECTURES.get("mlp-tcvae")(ModelConfig(latent_dim=10), (1, 64, 64), 20, 1)
    widths = [(m.in_features, m.out_features) for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert widths == [(4096, 1200), (1200, 1200), (1200, 20)]
    assert sum(isinstance(m, nn.ReLU) for m in encoder.modules()) == 2
    widths = [(m.in_features, m.out_features) for m in decoder.modules() if isinstance(m, nn.Linear)]
    assert widths == [(10, 1200), (1200, 1200), (1200, 1200), (1200, 4096)]
    assert sum(isinstance(m, nn.Tanh) for m in decoder.modules()) == 3
    assert encoder(torch.rand(5, 1, 64, 64)).shape == (5, 20)
    assert decoder(torch.randn(5, 10)).shape == (5, 1, 64, 64)


def test_conv64_takes_any_multiple_of_16_and_refuses_other_sizes_in_one_line():
    assert Conv64Encoder((1, 32, 48), 4)(torch.rand(2, 1, 32, 48)).shape == (2, 4)
    assert Conv64Decoder(2, (1, 32, 48), 1)(torch.randn(2, 2)).shape == (2, 1, 32, 48)
    with pytest.raises(
        VaelabError, match=r"^the conv64 architecture needs height and width divisible by 16 .*got 28x28$"
    ):
        build_model(ModelConfig(arch="conv64"), (1, 28, 28))


def test_a_conv64_vae_starts_at_the_data_mean_when_asked():
    model = build_model(ModelConfig(arch="conv64", latent_dim=4, decoder_bias="data-mean"), SHAPE)
    mean = torch.full(SHAPE, 0.2)
    model.init_output_bias(mean)
    assert model.decoder.net[-1].bias.item() == pytest.approx(math.log(0.2 / 0.8), abs=1e-5)


# --- the capacity-annealed objective -----------------------------------------------------------


def test_capacity_grows_linearly_then_stays():
    objective = CapacityELBO(gamma=1000.0, capacity_max=25.0, capacity_steps=100)
    assert [objective.capacity(s) for s in (0, 50, 100, 1000)] == [0.0, 12.5, 25.0, 25.0]
    assert CapacityELBO(capacity_max=5.0, capacity_steps=0).capacity(0) == 5.0


def test_capacity_loss_is_recon_plus_gamma_times_the_distance_of_the_mean_kl_from_c():
    model = tiny()
    x = torch.rand(6, 1, 8, 8)
    parts = model.elbo(x, noise(6))
    objective = make_objective("capacity", gamma=100.0, capacity_max=20.0, capacity_steps=40)
    terms = objective(model, x, Context(generators=noise(6).generators, step=10))
    expected = parts.reconstruction.mean() + 100.0 * (parts.kl.mean() - 5.0).abs()
    torch.testing.assert_close(terms.loss, expected)
    torch.testing.assert_close(terms.total, parts.reconstruction + parts.kl)  # the report is the true bound


# --- beta-TCVAE --------------------------------------------------------------------------------


def direct_decomposition(mu, sigma, z, dataset_size):
    """MI, TC, dimension-wise KL per example by explicit sums over the batch (float64), as Chen et al. write them."""
    mu, sigma, z = mu.double(), sigma.double(), z.double()
    m = len(z)
    rows = []
    for i in range(m):
        density_per_dim = Normal(mu, sigma).log_prob(z[i]).exp()  # M x d: q(z_ik | x_j)
        log_q_given_x = Normal(mu[i], sigma[i]).log_prob(z[i]).sum()
        log_q = math.log(density_per_dim.prod(1).sum() / (dataset_size * m))
        log_marginals = sum(math.log(density_per_dim[:, k].sum() / (dataset_size * m)) for k in range(z.shape[1]))
        log_p = Normal(0.0, 1.0).log_prob(z[i]).sum()
        rows.append([log_q_given_x - log_q, log_q - log_marginals, log_marginals - log_p])
    return torch.tensor(rows, dtype=torch.float64).T


def test_btcvae_terms_match_the_explicit_minibatch_weighted_sums():
    model = tiny()
    x = torch.rand(5, 1, 8, 8)
    densities = model.code_densities(x, noise(5))
    q = model.q_z(x)
    mi, tc, dim_kl = BetaTCVAE.decomposition(densities.log_q_pairs, densities.log_p, dataset_size=1000)
    expected = direct_decomposition(q.loc.detach(), q.scale.detach(), densities.z.detach(), 1000)
    for got, want in zip((mi, tc, dim_kl), expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_btcvae_with_unit_weights_is_the_one_sample_elbo():
    """alpha = beta = gamma = 1: MI + TC + dimension-wise KL telescope to log q(z|x) - log p(z)."""
    model = tiny()
    x = torch.rand(7, 1, 8, 8)
    ctx = noise(7)
    terms = make_objective("btcvae")(model, x, Context(generators=ctx.generators, dataset_size=60_000))
    q = model.q_z(x)
    z = model.code_densities(x, noise(7)).z
    one_sample_kl = q.log_prob(z) - model.p_z().log_prob(z)
    torch.testing.assert_close(terms.loss, (terms.reconstruction + one_sample_kl).mean())
    parts = terms.extra
    torch.testing.assert_close(
        parts["mutual_information"] + parts["total_correlation"] + parts["dimension_kl"], one_sample_kl
    )


def test_btcvae_weighs_each_term_on_its_own():
    model = tiny()
    x = torch.rand(4, 1, 8, 8)
    weighted = make_objective("btcvae", alpha=0.5, beta=6.0, gamma=2.0)(
        model, x, Context(generators=noise(4).generators, dataset_size=100)
    )
    e = weighted.extra
    expected = weighted.reconstruction + 0.5 * e["mutual_information"] + 6.0 * e["total_correlation"]
    torch.testing.assert_close(weighted.loss, (expected + 2.0 * e["dimension_kl"]).mean())


@pytest.mark.parametrize(
    ("iteration", "tc_weight", "dim_kl_weight"),
    [(1, 0.006, 0.102), (250, 1.5, 0.6), (950, 5.7, 2.0), (1000, 6.0, 2.0), (5000, 6.0, 2.0)],
)
def test_btcvae_anneals_as_chen_et_als_code_does(iteration, tc_weight, dim_kl_weight):
    """Their anneal_kl at iteration i (1 at the first step): beta * min(1, i / S) on the TC and
    (1 - max(0, 0.95 - i / S)) on the dimension-wise KL."""
    model = tiny()
    x = torch.rand(4, 1, 8, 8)
    objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, gamma=2.0, tc_anneal_steps=1000))
    assert objective.weights(iteration) == pytest.approx((tc_weight, dim_kl_weight))
    ctx = Context(generators=noise(4).generators, dataset_size=100, step=iteration - 1)  # the steps before it
    terms = objective(model, x, ctx)
    e = terms.extra
    expected = terms.reconstruction + e["mutual_information"] + tc_weight * e["total_correlation"]
    torch.testing.assert_close(terms.loss, (expected + dim_kl_weight * e["dimension_kl"]).mean())


def test_the_trainer_hands_the_warm_up_every_step_once_in_order(tmp_path, monkeypatch):
    import vaelab.train.trainer as trainer_module
    from tests.conftest import tiny_config
    from vaelab.train import Trainer

    seen = []

    class RecordingStep(trainer_module.TrainStep):
        def __call__(self, *args, step=0, **kwargs):
            seen.append(step)
            return super().__call__(*args, step=step, **kwargs)

    monkeypatch.setattr(trainer_module, "TrainStep", RecordingStep)
    config = tiny_config("objective.name=btcvae", "objective.beta=6.0", "objective.tc_anneal_steps=5")
    trainer = Trainer(config, tmp_path / "run", figures=False)
    trainer.fit(progress=False)
    assert seen == list(range(len(seen))) and len(seen) > 5  # steps 0, 1, ... across epochs: iterations 1, 2, ...


def test_btcvae_without_annealing_ignores_the_step():
    objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, gamma=2.0))
    assert objective.weights(0) == objective.weights(10**6) == (6.0, 2.0)


def test_btcvae_on_identical_posteriors_gives_the_estimators_known_offsets():
    """Every code under every example's posterior alike: log q(z_i) = log q(z_i|x) - log N, so the
    minibatch weighted estimate says MI = log N and TC = (d - 1) log N (it weighs each code 1/(NM))."""
    m, n = 6, 50
    z = torch.randn(m, D)
    log_q_pairs = Normal(torch.zeros(D), torch.ones(D) * 0.7).log_prob(z).unsqueeze(1).expand(m, m, D)
    mi, tc, _ = BetaTCVAE.decomposition(log_q_pairs, torch.zeros(m, D), n)
    torch.testing.assert_close(mi, torch.full((m,), math.log(n)))
    torch.testing.assert_close(tc, torch.full((m,), (D - 1) * math.log(n)))


def assert_terms_are(terms, q, z, log_q, log_marginals) -> None:
    """(MI, TC, dimension-wise KL) are log q(z|x) - log q(z), log q(z) - sum_k log q(z_k), that - log p(z)."""
    mi, tc, dim_kl = terms
    log_q_given_x = Normal(q.loc, q.scale).log_prob(z).sum(-1).detach().double()
    torch.testing.assert_close(mi.double(), log_q_given_x - log_q, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tc.double(), log_q - log_marginals, rtol=1e-4, atol=1e-4)
    log_p = Normal(0.0, 1.0).log_prob(z.detach()).sum(-1).double()
    torch.testing.assert_close(dim_kl.double(), log_marginals - log_p, rtol=1e-4, atol=1e-4)


def explicit_estimates(mu, sigma, z, columns, dataset_size, estimator):
    """log q(z_i) and sum_k log q(z_ik) written out (float64) over the C posteriors ``mu``, ``sigma`` (C x d;
    the first B the batch's, z_i drawn from the i-th) that ``columns`` (C bools) says are filled."""
    mu, sigma, z = mu[columns].double(), sigma[columns].double(), z.double()
    c, n = len(mu), dataset_size
    log_q, log_marginals = [], []
    for i in range(len(z)):
        density = Normal(mu, sigma).log_prob(z[i]).exp()  # C x d
        weights = torch.full((c,), 1 / (n * c), dtype=torch.float64)
        if estimator == "mss":
            weights = torch.full((c,), (n - 1) / (n * (c - 1)), dtype=torch.float64)
            weights[i] = 1 / n
        log_q.append(math.log((weights * density.prod(1)).sum()))
        log_marginals.append(sum(math.log((weights * density[:, k]).sum()) for k in range(z.shape[1])))
    return torch.tensor(log_q, dtype=torch.float64), torch.tensor(log_marginals, dtype=torch.float64)


def test_btcvae_stratified_terms_match_the_explicit_stratified_sums():
    model = tiny()
    x = torch.rand(5, 1, 8, 8)
    densities = model.code_densities(x, noise(5))
    q = model.q_z(x)
    terms = BetaTCVAE.decomposition(densities.log_q_pairs, densities.log_p, 1000, "mss")
    everyone = torch.ones(5, dtype=torch.bool)
    expected = explicit_estimates(q.loc.detach(), q.scale.detach(), densities.z.detach(), everyone, 1000, "mss")
    assert_terms_are(terms, q, densities.z, *expected)


def test_btcvae_stratified_estimate_is_exact_on_identical_posteriors():
    """Its weights sum to 1 over the batch: where every posterior is the same, q(z) is that posterior, so MI
    and TC are 0 (the weighted estimate says log N and (d - 1) log N there)."""
    m, n = 6, 50
    z = torch.randn(m, D)
    log_q_pairs = Normal(torch.zeros(D), torch.ones(D) * 0.7).log_prob(z).unsqueeze(1).expand(m, m, D)
    mi, tc, _ = BetaTCVAE.decomposition(log_q_pairs, torch.zeros(m, D), n, "mss")
    torch.testing.assert_close(mi, torch.zeros(m), atol=1e-5, rtol=0)
    torch.testing.assert_close(tc, torch.zeros(m), atol=1e-5, rtol=0)


def test_btcvae_stratified_weights_are_one_over_n_on_the_diagonal_and_sum_to_one():
    log_w = BetaTCVAE.stratified_log_weights(5, 100)
    w = log_w.double().exp()
    torch.testing.assert_close(w.diagonal(), torch.full((5,), 1 / 100, dtype=torch.float64))
    torch.testing.assert_close(w[0, 1:], torch.full((4,), 99 / (100 * 4), dtype=torch.float64))
    torch.testing.assert_close(w.sum(1), torch.ones(5, dtype=torch.float64))
    assert BetaTCVAE.stratified_log_weights(1, 100).exp().item() == 1.0  # a batch of one: its own code
    assert BetaTCVAE.stratified_log_weights(3, 1).exp().diagonal().tolist() == [1.0, 1.0, 1.0]  # N = 1: no others
    with pytest.raises(ValueError, match="estimator must be one of mws, mss"):
        BetaTCVAE(estimator="MWS")


def test_the_configured_estimator_is_the_one_that_trains():
    model = tiny()
    x = torch.rand(6, 1, 8, 8)
    ctx = Context(generators=noise(6).generators, dataset_size=1000)
    objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, tc_estimator="mss"))
    terms = objective(model, x, ctx)
    densities = model.code_densities(x, noise(6))
    _, tc, _ = BetaTCVAE.decomposition(densities.log_q_pairs, densities.log_p, 1000, "mss")
    _, tc_weighted, _ = BetaTCVAE.decomposition(densities.log_q_pairs, densities.log_p, 1000, "mws")
    torch.testing.assert_close(terms.extra["total_correlation"], tc)
    assert not torch.allclose(tc, tc_weighted)


def test_btcvae_stratified_with_unit_weights_is_still_the_one_sample_elbo():
    model = tiny()
    x = torch.rand(7, 1, 8, 8)
    objective = make_objective("btcvae", tc_estimator="mss")
    terms = objective(model, x, Context(generators=noise(7).generators, dataset_size=60_000))
    q, z = model.q_z(x), model.code_densities(x, noise(7)).z
    torch.testing.assert_close(terms.loss, (terms.reconstruction + q.log_prob(z) - model.p_z().log_prob(z)).mean())


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"posterior": "full"}, "the full posterior does not factorise over latent dimensions"),
        ({"prior": "mog"}, "this prior does not factorise over latent dimensions"),
    ],
)
def test_btcvae_refuses_what_does_not_factorise(keys, message):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[8], latent_dim=D, **keys), (1, 8, 8))
    with pytest.raises(Unsupported, match=message):
        make_objective("btcvae")(model, torch.rand(3, 1, 8, 8), Context(dataset_size=10))


def test_the_tc_estimator_is_checked_and_belongs_to_btcvae():

    assert (
        apply_overrides(RunConfig(), ["objective.name=btcvae", "objective.tc_estimator=mss"]).objective.tc_estimator
        == "mss"
    )
    with pytest.raises(VaelabError, match="objective.tc_estimator must be one of"):
        apply_overrides(RunConfig(), ["objective.name=btcvae", "objective.tc_estimator=stratified"])
    with pytest.raises(VaelabError, match="objective.tc_estimator applies to objective.name = btcvae"):
        apply_overrides(RunConfig(), ["objective.tc_estimator=mss"])
    with pytest.raises(VaelabError, match="objective.tc_anneal_steps applies to objective.name = btcvae"):
        apply_overrides(RunConfig(), ["objective.tc_anneal_steps=7000"])
    with pytest.raises(VaelabError, match="objective.tc_anneal_steps must be"):
        apply_overrides(RunConfig(), ["objective.name=btcvae", "objective.tc_anneal_steps=-1"])


# --- beta-TCVAE with remembered posteriors (objective.tc_memory) --------------------------------------


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_remembered_posteriors_join_the_batch_in_the_joint_and_every_marginal(estimator):
    torch.manual_seed(3)
    model = tiny()
    x = torch.rand(5, 1, 8, 8)
    densities = model.code_densities(x, noise(5))
    q = model.q_z(x)
    loc, scale = torch.randn(7, D), torch.rand(7, D) + 0.3
    filled = torch.tensor([0.0] * 4 + [-math.inf] * 3)  # three empty slots
    remembered = (*BetaTCVAE.remembered_log_sums(densities.z, loc, scale, filled), filled.exp().sum())
    terms = BetaTCVAE.decomposition(densities.log_q_pairs, densities.log_p, 1000, estimator, remembered)
    mu, sigma = torch.cat([q.loc.detach(), loc]), torch.cat([q.scale.detach(), scale])
    columns = torch.tensor([True] * 5 + [True] * 4 + [False] * 3)
    assert_terms_are(
        terms, q, densities.z, *explicit_estimates(mu, sigma, densities.z.detach(), columns, 1000, estimator)
    )


def test_remembered_posteriors_like_the_batchs_leave_the_stratified_estimate_exact():
    """Every posterior, remembered or not, the same: the stratified weights sum to 1 over all of them, so
    MI and TC stay 0; were the memory in the joint only, TC would not."""
    m, n = 4, 50
    z = torch.randn(m, D)
    posterior = Normal(torch.zeros(D), torch.ones(D) * 0.7)
    log_q_pairs = posterior.log_prob(z).unsqueeze(1).expand(m, m, D)
    loc, scale = torch.zeros(6, D), torch.full((6, D), 0.7)
    filled = torch.zeros(6)
    remembered = (*BetaTCVAE.remembered_log_sums(z, loc, scale, filled), filled.exp().sum())
    mi, tc, _ = BetaTCVAE.decomposition(log_q_pairs, torch.zeros(m, D), n, "mss", remembered)
    torch.testing.assert_close(mi, torch.zeros(m), atol=1e-5, rtol=0)
    torch.testing.assert_close(tc, torch.zeros(m), atol=1e-5, rtol=0)


def test_the_memory_keeps_the_latest_posteriors_in_a_ring():
    model = tiny()
    objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, tc_memory=10))
    seen, seen_scales = [], []
    for step in range(4):  # 4 x 4 posteriors into 10 slots: the ring wraps
        x = torch.rand(4, 1, 8, 8)
        terms = objective(model, x, Context(generators=noise(4, seed=10 * step).generators, dataset_size=100))
        seen.append(terms.posterior[0].detach())
        seen_scales.append(terms.posterior[1].detach())
        objective.after_step(terms)
    loc, scale, filled = objective.remembered
    latest = torch.cat(seen)[-10:]  # the last ten, written at slots 6..9 then 0..5
    torch.testing.assert_close(torch.cat([loc[6:], loc[:6]]), latest)
    torch.testing.assert_close(torch.cat([scale[6:], scale[:6]]), torch.cat(seen_scales)[-10:])
    assert filled.tolist() == [0.0] * 10
    big = torch.rand(25, 1, 8, 8)  # more posteriors than slots: the last ten are kept
    terms = objective(model, big, Context(generators=noise(25).generators, dataset_size=100))
    objective.after_step(terms)
    assert torch.equal(objective.remembered[0].sort(0).values, terms.posterior[0].detach()[-10:].sort(0).values)


def test_a_half_filled_memory_counts_only_what_it_holds():
    model = tiny()
    x = torch.rand(4, 1, 8, 8)
    objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, tc_memory=50))
    first = objective(model, x, Context(generators=noise(4).generators, dataset_size=100))
    assert objective.remembered is None and first.posterior is not None
    objective.after_step(first)
    assert objective.remembered[2].exp().sum().item() == 4  # 4 of the 50 slots filled
    second = objective(model, x, Context(generators=noise(4).generators, dataset_size=100))
    plain = make_objective("btcvae", beta=6.0)(model, x, Context(generators=noise(4).generators, dataset_size=100))
    assert plain.posterior is None
    # the same four posteriors remembered: every sum doubles and its count too, so the MWS estimates stand
    torch.testing.assert_close(second.extra["total_correlation"], plain.extra["total_correlation"])
    torch.testing.assert_close(second.loss, plain.loss)


def test_a_run_with_remembered_posteriors_trains(tmp_path):
    from tests.conftest import tiny_config
    from vaelab.train import Trainer

    config = tiny_config("objective.name=btcvae", "objective.beta=6.0", "objective.tc_memory=64")
    trainer = Trainer(config, tmp_path / "run", figures=False)
    trainer.fit(progress=False)
    assert trainer.objective.remembered[2].exp().sum().item() == 64  # the steps filled the ring
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    assert train and all(math.isfinite(r["total_correlation"]) for r in train)


def _records_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_has_its_remembered_posteriors_back(tmp_path):
    """Stopped after epoch 1 and resumed, the run trains on as the whole run does: the ring is in the checkpoint."""
    from tests.conftest import tiny_config
    from vaelab.train import Trainer

    config = tiny_config("objective.name=btcvae", "objective.beta=6.0", "objective.tc_memory=48", "train.epochs=3")
    whole = Trainer(config, tmp_path / "whole", figures=False)
    whole.fit(progress=False)
    stopped = Trainer(config, tmp_path / "stopped", figures=False)
    real = stopped.train_epoch

    def stopping(*args, **kwargs):
        if stopped.epoch == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    stopped.train_epoch = stopping
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(progress=False)
    resumed = Trainer.resume(tmp_path / "stopped")
    assert resumed.epoch == 1 and resumed.objective.remembered is not None
    resumed.fit(progress=False)
    for a, b in zip(_records_of(tmp_path / "stopped"), _records_of(tmp_path / "whole"), strict=True):
        assert (a["epoch"], a["split"]) == (b["epoch"], b["split"])
        assert a["total"] == pytest.approx(b["total"], rel=1e-6), (a, b)
    for kept, expected in zip(resumed.objective.remembered, whole.objective.remembered):
        assert torch.equal(kept, expected)


def test_remembered_posteriors_that_do_not_fit_are_refused_whole():
    objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, tc_memory=8))
    state = {"loc": torch.zeros(8, 3), "scale": torch.ones(8, 3), "filled": torch.ones(8, dtype=torch.bool)}
    objective.load_state_dict({**state, "next_slot": torch.tensor(2)})
    assert objective._next_slot == 2 and objective.remembered[2].tolist() == [0.0] * 8
    for bad in (
        {**state, "next_slot": torch.tensor(9)},  # a slot the ring has not
        {**state, "loc": torch.zeros(4, 3), "next_slot": torch.tensor(0)},  # another memory size
        {**state, "scale": torch.zeros(8, 3), "next_slot": torch.tensor(0)},  # no density has scale 0
        state,  # a key missing
    ):
        with pytest.raises(VaelabError, match="do not fit objective.tc_memory = 8"):
            objective.load_state_dict(bad)
        assert objective._next_slot == 2  # unchanged
    with pytest.raises(VaelabError, match="objective state"):
        make_objective("elbo").load_state_dict(state)


def test_a_memory_as_large_as_the_data_is_refused():
    model = tiny()
    objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, tc_memory=98))
    with pytest.raises(VaelabError, match="objective.tc_memory = 98 and a batch of 4 exceed the 100 training examples"):
        objective(model, torch.rand(4, 1, 8, 8), Context(generators=noise(4).generators, dataset_size=100))


def test_an_empty_step_leaves_the_memory_alone():
    objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, tc_memory=8))
    empty = torch.zeros(0, 3)
    objective.after_step(Terms(torch.zeros(()), empty[:, 0], empty[:, 0], empty[:, 0], posterior=(empty, empty)))
    assert objective.remembered is None


def test_the_compiled_objective_reads_the_ring_as_it_is_refilled():
    from vaelab.train.step import TrainStep

    losses = []
    for compile in (False, True):
        model = tiny()
        objective = build_objective(ObjectiveConfig(name="btcvae", beta=6.0, tc_memory=10))
        step = TrainStep(
            model, objective, torch.optim.Adam(model.parameters(), 1e-3), compile=compile, dataset_size=100
        )
        losses.append([])
        for i in range(4):  # the ring wraps on the third step
            terms = step(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(i)), step=i)
            losses[-1].append(terms.extra["total_correlation"].detach())
    for eager, compiled in zip(*losses):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_the_memory_size_is_checked_and_belongs_to_btcvae():
    config = apply_overrides(RunConfig(), ["objective.name=btcvae", "objective.tc_memory=4096"])
    assert config.objective.tc_memory == 4096
    with pytest.raises(VaelabError, match="objective.tc_memory must be"):
        apply_overrides(RunConfig(), ["objective.name=btcvae", "objective.tc_memory=-1"])
    with pytest.raises(VaelabError, match="objective.tc_memory applies to objective.name = btcvae"):
        apply_overrides(RunConfig(), ["objective.tc_memory=4096"])


def test_btcvae_needs_the_data_set_size_and_the_whole_batch():
    model = tiny()
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(VaelabError, match="needs the training set's size N"):
        make_objective("btcvae")(model, x, Context())
    with pytest.raises(VaelabError, match="data-parallel training is not supported"):
        make_objective("btcvae")(model, x[:2], Context(dataset_size=10, shard=Shard(0, 2, 4)))


# --- FactorVAE ---------------------------------------------------------------------------------


def tiny_factor() -> FactorVAE:
    return tiny("factorvae", tc_weight=10.0, discriminator_hidden=[12, 12]).train()


def grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def reached(module: nn.Module) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads(module))


def test_permuting_dims_shuffles_each_column_on_its_own():
    z = torch.arange(40.0).reshape(8, 5)
    shuffled = permute_dims(z, torch.randn(8, 5, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(shuffled.sort(0).values, z)  # each column keeps its values
    orders = [tuple(shuffled[:, k].long().tolist()) for k in range(5)]
    assert len(set(tuple((v - k) // 5 for v in order) for k, order in enumerate(orders))) > 1  # not one shared order


def test_the_tc_estimate_is_the_discriminators_logit_difference_and_its_loss_the_two_halves_cross_entropy():
    model = tiny_factor()
    x = torch.rand(8, 1, 8, 8)
    parts, z, _ = model.sampled_elbo(x, noise(8))
    logits = model.discriminator(z)
    torch.testing.assert_close(parts.extra["total_correlation"], (logits[:, 0] - logits[:, 1]).detach())
    # the permutation comes from the context's noise after z's: the same generators give the same order
    ctx = noise(8)
    ctx.noise((8, D), x)  # z's noise
    permuted = permute_dims(z[4:].detach(), ctx.noise((8, D), x)[4:])
    expected = 0.5 * (
        F.cross_entropy(model.discriminator(z[:4].detach()), torch.zeros(4, dtype=torch.long))
        + F.cross_entropy(model.discriminator(permuted), torch.ones(4, dtype=torch.long))
    )
    torch.testing.assert_close(parts.extra["discriminator"].mean(), expected)
    torch.testing.assert_close(parts.penalty, 10.0 * parts.extra["total_correlation"] + parts.extra["discriminator"])


def test_each_factorvae_term_reaches_only_its_own_parameters():
    model = tiny_factor()
    x = torch.rand(8, 1, 8, 8)

    def backward(pick) -> None:
        model.zero_grad(set_to_none=True)
        parts, z, _ = model.sampled_elbo(x, noise(8))
        pick(parts, z).backward()

    backward(lambda parts, z: model.total_correlation(z).mean())  # the VAE's TC penalty
    assert reached(model.encoder) and not reached(model.discriminator) and not reached(model.decoder)
    backward(lambda parts, z: model.discriminator_loss(z, noise(8)).mean())  # the discriminator's loss
    assert reached(model.discriminator) and not reached(model.encoder) and not reached(model.decoder)
    backward(lambda parts, z: (parts.reconstruction + parts.kl).mean())  # the ELBO
    assert reached(model.encoder) and reached(model.decoder) and not reached(model.discriminator)

    # the whole loss: the discriminator's gradient is its own loss's, the encoder's has the TC term's in it
    backward(lambda parts, z: make_objective("elbo")(model, x, noise(8)).loss)
    whole = [g.clone() for g in grads(model.discriminator)]
    backward(lambda parts, z: model.discriminator_loss(z, _after_z(x)).mean())
    for g_whole, g_own in zip(whole, grads(model.discriminator)):
        torch.testing.assert_close(g_whole, g_own)


def _after_z(x: torch.Tensor) -> Context:
    """noise(8) with z's draw already taken, so the next draw is the permutation's (as inside sampled_elbo)."""
    ctx = noise(8)
    ctx.noise((8, D), x)
    return ctx


def test_the_discriminator_has_its_own_adam_betas_and_every_parameter_one_group():
    model = tiny_factor()
    groups = model.parameter_groups()
    optimizer = torch.optim.Adam(groups, lr=1e-4)
    assert [g["betas"] for g in optimizer.param_groups] == [(0.9, 0.999), DISCRIMINATOR_BETAS]
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-4]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.discriminator.parameters()}


def test_factorvae_evaluates_the_plain_elbo_and_trains_only_under_an_elbo_objective():
    model = tiny_factor().eval()
    x = torch.rand(4, 1, 8, 8)
    parts = model.elbo(x, noise(4))
    assert parts.penalty is None and "total_correlation" not in parts.extra
    assert torch.isfinite(model.log_weights(x, 3, noise(4)).log_w).all()  # the NLL's weights, in evaluation
    model.train()
    with pytest.raises(VaelabError, match="trains with objective.name = elbo, capacity or btcvae"):
        make_objective("iwae", k=2)(model, x, noise(4))
    with pytest.raises(VaelabError, match="data-parallel training is not supported"):
        make_objective("elbo")(model, x[:2], Context(shard=Shard(0, 2, 4)))


def test_btcvae_trains_a_factorvae_with_its_penalty_too():
    model = tiny_factor()
    x = torch.rand(4, 1, 8, 8)
    terms = make_objective("btcvae", beta=2.0)(model, x, Context(generators=noise(4).generators, dataset_size=50))
    e = terms.extra
    own = e["mutual_information"] + 2.0 * e["total_correlation"] + e["dimension_kl"]
    penalty = model.sampled_elbo(x, noise(4))[0].penalty  # the same noise: the same codes and permutation
    torch.testing.assert_close(terms.loss, (terms.reconstruction + own).mean() + penalty.mean())


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            ["objective.gamma=5"],
            "objective.gamma applies to objective.name = btcvae or capacity; it means nothing for elbo",
        ),
        (
            ["objective.capacity_max=5", "objective.name=btcvae"],
            "objective.capacity_max applies to objective.name = capacity",
        ),
        (["objective.free_bits=0.5", "objective.name=btcvae"], "objective.free_bits applies to objective.name = elbo"),
        (["objective.name=capacity", "objective.beta=4"], "objective.beta means nothing for objective.name = capacity"),
        (["objective.alpha=-1", "objective.name=btcvae"], "objective.alpha must be >= 0"),
        (["objective.capacity_steps=-3", "objective.name=capacity"], "objective.capacity_steps must be >= 0"),
        (["model.tc_weight=-1"], "model.tc_weight must be >= 0"),
        (["model.discriminator_hidden=[]"], "model.discriminator_hidden must be a non-empty list of positive widths"),
        (["model.discriminator_hidden=[1000, 0]"], "model.discriminator_hidden must be a non-empty list"),
        (["model.discriminator_hidden=[100000]"], "model.discriminator_hidden: a layer has at most 16384 units"),
    ],
)
def test_bad_disentanglement_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(VaelabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(RunConfig(), override)


def test_the_registries_list_the_new_entries():
    assert "conv64" in ARCHITECTURES and "factorvae" in FAMILIES
    assert {"capacity", "btcvae"} <= set(OBJECTIVES.names())
    config = ObjectiveConfig(name="capacity", gamma=1000.0, capacity_max=25.0, capacity_steps=10)
    config.validate()


# --- through the CLI ---------------------------------------------------------------------------

SMALL = [
    "model.arch='conv64'",
    "model.latent_dim=4",
    "data.validation_size=32",
    "train.batch_size=32",
    "train.eval_batch_size=32",
    "train.threads=1",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["objective.name='capacity'", "objective.gamma=100", "objective.capacity_max=5", "objective.capacity_steps=4"],
        ["objective.name='btcvae'", "objective.beta=6"],
        ["model.family='factorvae'", "model.tc_weight=10", "model.discriminator_hidden=[64, 64]"],
    ],
    ids=["capacity", "btcvae", "factorvae"],
)
def test_each_model_trains_a_few_steps_through_the_cli(run_cli, tmp_path, shapes_data, overrides):
    run = tmp_path / "run"
    args = set_args([f"data.name='{shapes_data}'", *SMALL, "train.epochs=2", *overrides])
    trained = run_cli("train", "--out", run, "--no-figures", *args, timeout=300)
    assert trained.returncode == 0, trained.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2 and all(math.isfinite(r["total"]) for r in records)
    assert train[1]["total"] < train[0]["total"]  # learning: the second epoch's bound is below the first's
    report = (run / "report.md").read_text()
    assert "- model: conv64, latent dim 4" in report


def test_a_trained_factorvae_resumes_with_its_two_parameter_groups(tmp_path, shapes_data):
    from vaelab.train import Trainer

    config = apply_overrides(
        RunConfig(),
        [
            f"data.name='{shapes_data}'",
            *SMALL,
            "train.epochs=1",
            "model.family='factorvae'",
            "model.discriminator_hidden=[16]",
        ],
    )
    Trainer(config, tmp_path / "run", figures=False).fit(progress=False)
    resumed = Trainer.resume(tmp_path / "run")
    assert [g["betas"] for g in resumed.optimizer.param_groups] == [(0.9, 0.999), DISCRIMINATOR_BETAS]
    assert resumed.epoch == 1 and resumed.optimizer.state  # Adam's moments came back
    resumed._lock.close()


def test_cli_errors_are_one_line(run_cli, tmp_path, shapes_data):
    mnist_conv64 = run_cli("train", "--out", tmp_path / "a", *set_args(["model.arch='conv64'", "train.epochs=1"]))
    assert mnist_conv64.returncode == 2 and "Traceback" not in mnist_conv64.stderr
    assert (
        mnist_conv64.stderr.strip()
        .splitlines()[-1]
        .startswith("error: the conv64 architecture needs height and width divisible by 16")
    )
    overrides = [
        f"data.name='{shapes_data}'",
        *SMALL,
        "train.epochs=1",
        "objective.name='btcvae'",
        "model.posterior='iaf'",
    ]
    iaf = run_cli("train", "--out", tmp_path / "b", "--no-figures", *set_args(overrides))
    assert iaf.returncode == 2 and "Traceback" not in iaf.stderr
    assert "the iaf posterior does not factorise over latent dimensions" in iaf.stderr.strip().splitlines()[-1]
    gamma = run_cli("train", "--out", tmp_path / "c", *set_args(["objective.gamma=3"]))
    assert gamma.returncode == 2 and "Traceback" not in gamma.stderr
    assert len(gamma.stderr.strip().splitlines()) == 1


def test_list_names_the_new_entries(run_cli):
    listing = json.loads(run_cli("list", "--json").stdout)
    assert "conv64" in {e["name"] for e in listing["architectures"]}
    assert "factorvae" in {e["name"] for e in listing["families"]}
    assert {"capacity", "btcvae"} <= {e["name"] for e in listing["objectives"]}
