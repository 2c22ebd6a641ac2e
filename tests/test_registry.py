"""The registries: what `vaelab list` prints, what configs accept, and that a new entry needs only its decorator."""

from __future__ import annotations

import json

import pytest
from torch import nn

from vaelab.config import ModelConfig
from vaelab.core.registry import ALL, LIKELIHOODS, Registry
from vaelab.errors import VaelabError
from vaelab.model import build_vae, make_objective


def test_list_json_prints_every_registry(run_cli):
    result = run_cli("list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert set(listing) == {*ALL, "datasets"}
    for kind, registry in ALL.items():
        assert [entry["name"] for entry in listing[kind]] == list(registry.names())
        assert all(entry["summary"] for entry in listing[kind])
    assert {"conv", "dense", "mlp"} <= {e["name"] for e in listing["architectures"]}
    assert {"elbo", "iwae"} <= {e["name"] for e in listing["objectives"]}
    assert "mnist" in {e["name"] for e in listing["datasets"]}


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
