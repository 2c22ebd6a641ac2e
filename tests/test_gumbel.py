"""The Gumbel-softmax joint family and the best-matching accuracy of a discrete code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence

from tests.conftest import tiny_config
from vaelab.config import ModelConfig
from vaelab.errors import VaelabError
from vaelab.eval.clustering import best_match_accuracy
from vaelab.model import Context, build_model, load_model
from vaelab.model.gumbel import gumbel_from_normal
from vaelab.model.gumbel.model import ANNEAL_RATE, TAU_MIN

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
