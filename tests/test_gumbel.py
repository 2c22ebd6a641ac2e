"""The Gumbel-softmax joint family and the best-matching accuracy of a discrete code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence

from tests.conftest import tiny_config
from vaelab.config import ModelConfig
from vaelab.errors import VaelabError
from vaelab.eval.clustering import best_match_accuracy
from vaelab.model import Context, build_model, build_objective, load_model, make_objective
from vaelab.model.gumbel import gumbel_from_normal
from vaelab.model.gumbel.model import ANNEAL_RATE, TAU_MIN
from vaelab.model.objectives import PartCapacity

SHAPE = (1, 28, 28)


def tiny_gumbel():
    torch.manual_seed(0)
    return build_model(ModelConfig(family="gumbel", arch="mlp", hidden=[16], latent_dim=2, classes=4), SHAPE)


def test_gumbel_noise_from_normal_noise_has_the_gumbel_moments():
    g = gumbel_from_normal(torch.randn(400_000, generator=torch.Generator().manual_seed(0)))
    assert g.mean().item() == pytest.approx(0.5772, abs=0.01)  # the Euler-Mascheroni constant
    assert g.var().item() == pytest.approx(math.pi**2 / 6, abs=0.02)


def test_the_eval_bound_is_the_exact_expectation_over_the_category():
    model = tiny_gumbel().eval()
    x = torch.rand(3, *SHAPE)
    parts = model.elbo(x, Context(generators=[torch.Generator().manual_seed(i) for i in range(3)]))

    out = model.encoder(x)
    mu, log_var, logits = out[:, :2], out[:, 2:4], out[:, 4:]
    sigma = (0.5 * log_var).exp()
    eps = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    z = mu + sigma * eps
    q_c = Categorical(logits=logits)
    log_px = torch.stack(
        [
            Independent(
                Bernoulli(logits=model.decoder(torch.cat([z, torch.eye(4)[c].expand(3, -1)], 1)), validate_args=False),
                3,
            ).log_prob(x)
            for c in range(4)
        ]
    )
    reconstruction = -(q_c.probs.T * log_px).sum(0)
    kl = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(-1) + kl_divergence(
        q_c, Categorical(logits=torch.zeros(4))
    )
    assert torch.allclose(parts.reconstruction, reconstruction, atol=1e-3)
    assert torch.allclose(parts.kl, kl, atol=1e-5)
    assert int(model.steps) == 0  # evaluation does not move the temperature


def test_training_anneals_the_temperature_and_the_category_conditions_the_decoder():
    model = tiny_gumbel().train()
    assert model.temperature == 1.0
    x = torch.rand(2, *SHAPE)
    model.elbo(x, Context())
    model.elbo(x, Context())
    assert int(model.steps) == 2 and model.temperature == pytest.approx(math.exp(-2 * ANNEAL_RATE))
    model.steps.fill_(10**6)
    assert model.temperature == TAU_MIN
    model.eval()
    z = torch.randn(3, 2)
    assert not torch.allclose(model.decode(z, labels=0), model.decode(z, labels=1))
    assert model.discrete_code(x).shape == (2,) and model.can("discrete_code") and not model.takes_labels
    with pytest.raises(VaelabError, match="category 4 is not a class of this model: its categories are 0 to 3"):
        model.condition(4)
    with pytest.raises(VaelabError, match=r"decodes a code under a category \(0 to 3\)"):
        model.decode(z)


def test_best_match_accuracy_on_codes_with_known_answers():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert best_match_accuracy(np.array([2, 2, 0, 0, 1, 1]), labels) == 1.0  # a relabelling is a perfect code
    assert best_match_accuracy(np.array([0, 0, 0, 0, 0, 0]), labels) == pytest.approx(1 / 3)  # one cluster
    assert best_match_accuracy(np.array([0, 1, 2, 3, 4, 5]), labels) == pytest.approx(1 / 2)  # unmatched codes fail
    assert best_match_accuracy(np.array([1, 1, 1, 0, 2, 2]), labels) == pytest.approx(5 / 6)


def test_a_tiny_run_draws_its_figures_and_reports_the_cluster_accuracy(tmp_path):
    from vaelab.eval.summary import evaluate_model
    from vaelab.train import Trainer, make_batches

    config = tiny_config("model.family='gumbel'", "train.epochs=1")
    Trainer(config, tmp_path / "run", figures=True).fit(progress=False)
    assert {"class_samples.png", "style_transfer.png"} <= {p.name for p in (tmp_path / "run" / "figures").iterdir()}
    model, config, _ = load_model(tmp_path / "run")
    dataset, batches = make_batches(config)
    result = evaluate_model(model, dataset, batches["train"], batches["test"], frechet_samples=50)
    assert 0.1 <= result["cluster_accuracy"] <= 1 and "label_accuracy" not in result


# --- JointVAE: a capacity per KL part (objective.capacity_parts) -------------------------------


def _hand_kl_parts(model, x):
    """KL(q(z|x) || N(0, I)) and KL(q(c|x) || Uniform(K)) per image, from the encoder's outputs by torch.distributions."""
    out = model.encoder(x)
    mu, log_var, logits = out[:, :2], out[:, 2:4], out[:, 4:]
    kl_z = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(-1)
    kl_c = kl_divergence(Categorical(logits=logits), Categorical(logits=torch.zeros(4)))
    return kl_z, kl_c


def test_the_kl_parts_are_named_bounded_and_sum_to_the_kl():
    model = tiny_gumbel()
    assert model.can("kl_part_bounds")
    assert model.kl_part_bounds() == {"continuous": math.inf, "categorical": math.log(4)}
    x = torch.rand(3, *SHAPE)
    for mode in (model.train, model.eval):
        mode()
        parts = model.elbo(x, Context(generators=[torch.Generator().manual_seed(i) for i in range(3)]))
        assert list(parts.kl_parts) == ["continuous", "categorical"]
        torch.testing.assert_close(parts.kl_parts["continuous"] + parts.kl_parts["categorical"], parts.kl)
    kl_z, kl_c = _hand_kl_parts(model, x)
    torch.testing.assert_close(parts.kl_parts["continuous"], kl_z)
    torch.testing.assert_close(parts.kl_parts["categorical"], kl_c)


def test_a_part_capacity_grows_linearly_to_its_maximum_and_stops_at_its_bound():
    part = PartCapacity(gamma=30.0, maximum=5.0, steps=100)
    assert [part.capacity(s) for s in (0, 25, 50, 100, 10_000)] == [0.0, 1.25, 2.5, 5.0, 5.0]
    bound = math.log(10)  # a 10-way categorical holds at most log 10 = 2.30 nats
    assert [part.capacity(s, bound) for s in (0, 25, 46, 50, 100)] == pytest.approx([0.0, 1.25, 2.3, bound, bound])
    assert part.capacity(50, bound) == bound  # capped exactly
    assert PartCapacity(1.0, 3.0, 0).capacity(0) == 3.0  # no steps: C_max from the start


def test_per_part_capacities_come_from_the_lists_or_the_single_capacity_keys():
    objective = make_objective(
        "capacity",
        gamma=30.0,
        capacity_max=5.0,
        capacity_steps=100,
        capacity_parts=["continuous", "categorical"],
        capacity_part_steps=[100, 40],
    )
    assert objective.parts == {
        "continuous": PartCapacity(30.0, 5.0, 100),
        "categorical": PartCapacity(30.0, 5.0, 40),
    }
    model = tiny_gumbel()
    assert objective.part_capacities(model, 10) == {"continuous": 0.5, "categorical": 1.25}
    assert objective.part_capacities(model, 40) == {"continuous": 2.0, "categorical": math.log(4)}  # capped


def test_the_per_part_loss_is_the_jointvae_formula_by_hand():
    model = tiny_gumbel().eval()  # eval: the reconstruction is the exact expectation, no relaxed sample
    x = torch.rand(5, *SHAPE)
    generators = [torch.Generator().manual_seed(i) for i in range(5)]
    objective = make_objective(
        "capacity",
        capacity_parts=["continuous", "categorical"],
        capacity_part_max=[5.0, 5.0],
        capacity_part_gamma=[30.0, 7.0],
        capacity_part_steps=[100, 200],
    )
    terms = objective(model, x, Context(generators=generators, step=50, kl_weight=0.5))

    reconstruction = model.elbo(x, Context(generators=[torch.Generator().manual_seed(i) for i in range(5)]))
    kl_z, kl_c = _hand_kl_parts(model, x)
    c_z, c_c = 5.0 * 50 / 100, min(5.0 * 50 / 200, math.log(4))  # 2.5 and 1.25 nats
    expected = reconstruction.reconstruction.mean() + 0.5 * (
        30.0 * (kl_z.mean() - c_z).abs() + 7.0 * (kl_c.mean() - c_c).abs()
    )
    torch.testing.assert_close(terms.loss, expected)
    torch.testing.assert_close(terms.total, reconstruction.reconstruction + kl_z + kl_c)  # the report: the true bound
    # after step 200 the categorical capacity is log 4, not its 5-nat maximum
    late = objective(model, x, Context(generators=[torch.Generator().manual_seed(i) for i in range(5)], step=400))
    expected = reconstruction.reconstruction.mean() + 30.0 * (kl_z.mean() - 5.0).abs()
    expected = expected + 7.0 * (kl_c.mean() - math.log(4)).abs()
    torch.testing.assert_close(late.loss, expected)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (
            ["continuous"],
            r"must name each of the gumbel model's KL parts once \(continuous, categorical\); missing: categorical",
        ),
        (
            ["continuous", "discrete"],
            r"\(continuous, categorical\); it has no discrete; missing: categorical",
        ),
    ],
)
def test_part_names_the_model_does_not_have_are_refused_in_one_line(parts, message):
    objective = make_objective("capacity", capacity_parts=parts)
    with pytest.raises(VaelabError, match=message) as refused:
        objective.check_model(tiny_gumbel())
    assert "\n" not in str(refused.value)
    with pytest.raises(VaelabError, match=message):  # also when called directly, without the trainer's check
        objective(tiny_gumbel(), torch.rand(2, *SHAPE), Context())


def test_a_family_without_kl_parts_refuses_per_part_capacities_before_training(tmp_path):
    from vaelab.train import Trainer

    config = tiny_config("objective.name='capacity'", "objective.capacity_parts=['continuous', 'categorical']")
    message = "objective.capacity_parts needs a model whose KL comes in named parts; the vae model family's does not"
    with pytest.raises(VaelabError, match=message) as refused:
        Trainer(config, tmp_path / "run", figures=False)
    assert "\n" not in str(refused.value) and not (tmp_path / "run").exists()
    make_objective("capacity").check_model(build_model(ModelConfig(arch="mlp", hidden=[8]), SHAPE))  # one C: any


def test_a_tiny_jointvae_run_trains_reports_its_parts_and_round_trips_its_config(tmp_path):
    from vaelab.config import RunConfig
    from vaelab.train import Trainer

    config = tiny_config(
        "model.family='gumbel'",
        "objective.name='capacity'",
        "objective.gamma=30",
        "objective.capacity_max=5",
        "objective.capacity_steps=10",
        "objective.capacity_parts=['continuous', 'categorical']",
        "objective.capacity_part_max=[5, 2]",
    )
    Trainer(config, tmp_path / "run", figures=False).fit(progress=False)
    assert RunConfig.load(tmp_path / "run" / "config.toml") == config
    report = (tmp_path / "run" / "report.md").read_text()
    assert (
        "- objective: capacity (beta 1.0, k 1, gamma 30, capacity_max 5, capacity_steps 10, "
        "capacity_parts [continuous, categorical], capacity_part_max [5, 2])"
    ) in report
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    test = records[-1]
    assert test["split"] == "test" and test["kl"] == pytest.approx(test["kl_continuous"] + test["kl_categorical"])


def test_the_jointvae_experiment_is_their_loss_on_our_budget():
    from vaelab.experiments import get_experiment

    config, _ = get_experiment("gumbel-jointvae").config()
    assert (config.model.family, config.model.arch, config.model.latent_dim, config.model.classes) == (
        "gumbel",
        "dense",
        10,
        10,
    )
    o = config.objective
    assert (o.name, o.capacity_parts, o.gamma, o.capacity_max) == ("capacity", ["continuous", "categorical"], 30.0, 5.0)
    assert (config.train.batch_size, config.train.lr) == (64, 5e-4)
    model = build_model(config.model, SHAPE)
    objective = build_objective(o)
    objective.check_model(model)
    assert objective.part_capacities(model, o.capacity_steps) == {"continuous": 5.0, "categorical": math.log(10)}
