"""The registries: what `vaelab list` prints, what configs accept, and that a new entry needs only its decorator."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.core.registry import ALL, LIKELIHOODS, Registry
from vaelab.errors import VaelabError
from vaelab.model import build_vae, make_objective


def test_list_json_prints_every_registry(run_cli):
    result = run_cli("list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert set(listing) == {*ALL, "datasets", "experiments"}
    for kind, registry in ALL.items():
        # as sets: this process's registration order follows its imports, the listing's a fresh process's
        assert sorted(entry["name"] for entry in listing[kind]) == sorted(registry.names())
        assert all(entry["summary"] for entry in listing[kind])
    assert {"conv", "dense", "mlp"} <= {e["name"] for e in listing["architectures"]}
    assert {"elbo", "iwae"} <= {e["name"] for e in listing["objectives"]}
    assert "mnist" in {e["name"] for e in listing["datasets"]}
    assert {"burda-iwae", "families-vamp-data-mean", "families"} <= {e["name"] for e in listing["experiments"]}


def test_an_unknown_name_is_an_error_naming_the_known_ones():
    with pytest.raises(VaelabError, match=r"objective.name = 'elbow' is not a known objective; known: elbo, iwae"):
        make_objective("elbow")
    registry: Registry = Registry("widget", "model.widget")
    registry.register("a", "the first")(object())
    with pytest.raises(VaelabError, match="known: a"):
        registry.get("b")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(object())


def test_a_registered_likelihood_is_built_without_editing_anything_else():
    class Halved(nn.Module):
        """a test likelihood: Bernoulli with the logits halved"""

        params_per_channel = 1

        def forward(self, logits):
            from torch.distributions import Bernoulli, Independent

            return Independent(Bernoulli(logits=logits / 2), 3)

    LIKELIHOODS.register("halved-test")(lambda config, image_shape: Halved())
    try:
        model = build_vae(ModelConfig(arch="mlp", hidden=[8], likelihood="halved-test"), (1, 28, 28))
        assert isinstance(model.likelihood, Halved)
        assert "halved-test" in LIKELIHOODS.names()
    finally:
        LIKELIHOODS._entries.pop("halved-test")


class _LinearFamily(__import__("vaelab.model.base", fromlist=["LatentVariableModel"]).LatentVariableModel):
    """A test family: a linear Gaussian encoder and a linear Bernoulli decoder, the ELBO and nothing else."""

    family = "linear-test"

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.latent_dim, self.image_shape = latent_dim, image_shape
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.encoder = nn.Linear(pixels, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, pixels)

    def elbo(self, x, ctx):
        from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

        from vaelab.model.base import ElboParts

        mu, log_var = self.encoder(x.flatten(1)).chunk(2, -1)
        eps = ctx.noise((len(x), self.latent_dim), x)
        z = mu + eps * (0.5 * log_var).exp()
        reconstruction = -Independent(Bernoulli(logits=self.decoder(z), validate_args=False), 1).log_prob(x.flatten(1))
        q, p = Normal(mu, (0.5 * log_var).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))
        return ElboParts(reconstruction, kl_divergence(q, p).sum(-1))


def test_a_registered_family_trains_saves_and_loads_through_the_unchanged_trainer_and_store(tmp_path):
    from tests.conftest import tiny_config
    from vaelab.core.registry import FAMILIES
    from vaelab.eval import iwae_bound
    from vaelab.model import Unsupported, load_model
    from vaelab.train import Trainer

    FAMILIES.register("linear-test", "a test family")(lambda config, shape, batch=1: _LinearFamily(3, shape))
    try:
        config = tiny_config("model.family='linear-test'", "train.epochs=1")
        test = Trainer(config, tmp_path / "run", figures=False).fit(progress=False)
        assert test["total"] > 0 and test["kl"] >= 0
        model, loaded_config, _ = load_model(tmp_path / "run")
        assert isinstance(model, _LinearFamily) and loaded_config.model.family == "linear-test"
        assert not model.can("log_weights") and model.can("elbo")
        with pytest.raises(Unsupported, match="linear-test model family has no importance weights"):
            iwae_bound(model, torch.rand(2, 1, 28, 28), k=4)
    finally:
        FAMILIES._entries.pop("linear-test")
