"""A model too large for this machine is refused before anything is allocated, saying how much it
would need and how much is available."""

from __future__ import annotations

from types import SimpleNamespace

import psutil
import pytest

from vaelab import VaelabError
from vaelab.config import ModelConfig
from vaelab.model import build_vae
from vaelab.model.build import check_memory

MNIST = (1, 28, 28)


@pytest.mark.parametrize(
    "config, needle",
    [
        (ModelConfig(latent_dim=10**9), r"latent_dim 1000000000"),
        (ModelConfig(arch="mlp", hidden=[10**9]), r"mlp model of 1,576,000,000,788 weights"),
        (ModelConfig(arch="dense", latent_dim=10**12), r"latent_dim 1000000000000"),
    ],
    ids=["latent-dim", "hidden-width", "dense-latent"],
)
def test_absurd_sizes_are_refused_with_the_estimate(config, needle):
    # terabytes: more than any machine this runs on has free
    with pytest.raises(VaelabError, match="would need about [0-9,.]+ [TP]iB of memory; only .* is available") as info:
        build_vae(config, MNIST)
    assert needle in str(info.value) and "model.latent_dim, model.hidden or train.batch_size" in str(info.value)


def test_sizes_torch_cannot_count_are_refused():
    with pytest.raises(VaelabError, match="too large to allocate"):
        build_vae(ModelConfig(arch="mlp", hidden=[2**62]), MNIST)
    with pytest.raises(VaelabError, match="too large to allocate"):
        build_vae(ModelConfig(arch="dense"), (3, 2**40, 2**40))  # an image shape a model.json could claim


def test_estimate_counts_the_weights_and_the_batch(monkeypatch):
    check_memory(ModelConfig(), MNIST, batch=128)  # the study's model fits anywhere
    # on a machine with 8 MiB free: the conv model's 134k weights (x4 copies) fit, 128 images' activations do not
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=8 << 20))
    check_memory(ModelConfig(), MNIST, batch=1)
    with pytest.raises(VaelabError, match=r"batches of 128 images .* only 8.0 MiB is available"):
        check_memory(ModelConfig(), MNIST, batch=128)
    # with 1 MiB free the weights alone are too many
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=1 << 20))
    with pytest.raises(VaelabError, match=r"conv model of 134,[0-9]{3} weights"):
        build_vae(ModelConfig(), MNIST)


def test_a_full_covariance_counts(monkeypatch):
    # latent_dim 2000 with a correlated prior: 2 x 2000^2 entries more than the standard prior's model
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=64 << 20))
    config = ModelConfig(arch="mlp", hidden=[8], latent_dim=2000)
    check_memory(config, MNIST)
    with pytest.raises(VaelabError, match="would need about"):
        check_memory(ModelConfig(arch="mlp", hidden=[8], latent_dim=2000, prior="correlated"), MNIST)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(arch="dense", latent_dim=5),
        ModelConfig(arch="mlp", hidden=[40, 30], likelihood="logistic-mixture", likelihood_components=4),
        ModelConfig(arch="mlp", hidden=[16], prior="vamp", prior_components=7, likelihood="gaussian-learned"),
        ModelConfig(arch="mlp", hidden=[16], prior="mog", likelihood="gaussian-decoded"),
    ],
    ids=["conv", "dense", "logistic-mixture", "vamp-learned-scale", "mog-decoded-variance"],
)
def test_estimate_counts_exactly_the_weights_the_model_gets(monkeypatch, config):
    weights = sum(p.numel() for p in build_vae(config, MNIST).parameters())
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=0))
    with pytest.raises(VaelabError, match=f"model of {weights:,} weights"):
        check_memory(config, MNIST)
