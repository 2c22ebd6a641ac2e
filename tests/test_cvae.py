"""The conditional VAE family: its bound, that the label conditions, the CLI around it, the shipped model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence
from torch.nn import functional as F

from tests.conftest import TINY, set_args, tiny_config
from vaelab.config import ModelConfig
from vaelab.errors import VaelabError
from vaelab.model import Context, build_model

SHAPE = (1, 28, 28)


def tiny_cvae(arch: str = "mlp", **keys) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(family="cvae", arch=arch, hidden=[16], latent_dim=3, **keys), SHAPE)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_elbo_matches_an_independent_computation(arch):
    model = tiny_cvae(arch)
    x, y = torch.rand(5, *SHAPE), torch.tensor([0, 3, 3, 7, 9])
    generators = [torch.Generator().manual_seed(i) for i in range(5)]
    parts = model.elbo(x, Context(labels=y, generators=generators))

    one_hot = F.one_hot(y, 10).float()
    mu, log_var = model.encoder(torch.cat([x, one_hot[:, :, None, None].expand(-1, -1, 28, 28)], 1)).chunk(2, -1)
    sigma = (0.5 * log_var).exp()
    eps = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(5)])
    logits = model.decoder(torch.cat([mu + sigma * eps, one_hot], 1))
    reconstruction = -Independent(Bernoulli(logits=logits, validate_args=False), 3).log_prob(x)
    kl = 0.5 * (mu**2 + sigma**2 - 1 - log_var).sum(-1)  # KL(N(mu, sigma^2) || N(0, I)), closed form
    assert torch.allclose(parts.reconstruction, reconstruction, atol=1e-3)
    assert torch.allclose(parts.kl, kl, atol=1e-5)
    assert torch.allclose(parts.kl, kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(-1), atol=1e-5)
    # the importance weights of one sample are the same bound: log w = -(reconstruction + log q - log p)
    weights = model.log_weights(
        x, 1, Context(labels=y, generators=[torch.Generator().manual_seed(i) for i in range(5)])
    )
    z = mu + sigma * eps
    log_w = -reconstruction + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu, sigma).log_prob(z).sum(-1)
    assert torch.allclose(weights.log_w[0], log_w, atol=1e-3)


def test_the_label_conditions_encoder_and_decoder():
    model = tiny_cvae().eval()
    z, x = torch.randn(4, 3), torch.rand(4, *SHAPE)
    assert not torch.allclose(model.decode(z, labels=0), model.decode(z, labels=1))
    assert not torch.allclose(model.encode(x, labels=2), model.encode(x, labels=5))
    per_example = torch.tensor([0, 1, 0, 1])
    assert torch.equal(model.decode(z, labels=per_example)[1], model.decode(z, labels=1)[1])
    assert torch.equal(model.condition(4).decode(z), model.decode(z, labels=4))
    # without labels: samples take the classes in turn; a code or an image alone is refused in one line
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model.sample(12, generator()), model.sample(12, generator(), labels=torch.arange(12) % 10))
    for call in (lambda: model.decode(z), lambda: model.encode(x), lambda: model.elbo(x, Context())):
        with pytest.raises(VaelabError, match=r"under a label \(0 to 9\)"):
            call()
    for bad, message in ((10, "label 10 is not a class"), (-1, "label -1 is not a class"), (0.5, "integer")):
        with pytest.raises(VaelabError, match=message):
            model.condition(bad)
    with pytest.raises(VaelabError, match="labels for 4 examples"):
        model.decode(z, labels=torch.tensor([0, 1]))


def test_a_prior_built_from_the_posterior_is_refused_in_one_line():
    with pytest.raises(VaelabError, match="model.prior = vamp"):
        build_model(ModelConfig(family="cvae", arch="mlp", hidden=[8], prior="vamp"), SHAPE)


def test_an_unconditional_model_has_no_condition():
    from vaelab.model import Unsupported

    model = build_model(ModelConfig(arch="mlp", hidden=[8]), SHAPE)
    assert not model.can("condition") and tiny_cvae().can("condition")
    with pytest.raises(Unsupported, match="the vae model family has no conditioning input"):
        model.condition(3)


def test_the_iwae_objective_and_data_mean_bias_train_a_cvae(tmp_path):
    from vaelab.train import Trainer

    config = tiny_config(
        "model.family='cvae'", "objective.name='iwae'", "objective.k=3", "model.decoder_bias='data-mean'"
    )
    config.train.epochs = 1
    test = Trainer(config, tmp_path / "run", figures=False).fit(progress=False)
    assert test["total"] > 0 and test["kl"] >= 0


def test_train_sample_eval_and_plot_from_the_command_line(tmp_path, run_cli):
    run = tmp_path / "run"
    result = run_cli("train", "--out", run, *set_args([*TINY, "train.epochs=1", "model.family=cvae"]))
    assert result.returncode == 0, result.stderr
    figures = {p.name for p in (run / "figures").iterdir()}
    assert {"class_samples.png", "style_transfer.png", "reconstructions.png", "samples.png"} <= figures
    assert "latent_manifold.png" not in figures  # it would need a label

    result = run_cli("sample", run, "--label", "3", "-n", "4")
    assert result.returncode == 0, result.stderr
    assert (run / "figures" / "samples-4-seed0-label3.png").is_file()
    result = run_cli("sample", run, "--label", "11")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "label 11 is not a class of this model: its labels are 0 to 9" in result.stderr

    result = run_cli("eval", run, "--json", "--limit", "64", "--fd-samples", "100", "--nll", "--k", "4")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(result.stdout)
    assert evaluation["total"] > 0 and evaluation["nll"] > 0 and evaluation["knn5_accuracy"] is not None
    assert 0 <= evaluation["label_accuracy"] <= 1 and evaluation["label_samples"] == 100
    assert len(evaluation["label_accuracy_per_class"]) == 10


def test_list_names_the_family(run_cli):
    listing = json.loads(run_cli("list", "--json").stdout)
    assert "cvae" in {entry["name"] for entry in listing["families"]}


def test_label_on_an_unconditional_model_is_one_line_exit_2(run_cli, tmp_path):
    result = run_cli("sample", "--pretrained", "seed-2d", "--label", "3", "-o", tmp_path / "s.png")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "the vae model family has no conditioning input" in result.stderr
    assert not (tmp_path / "s.png").exists()


def test_the_shipped_cvae_draws_the_digit_it_is_asked_for(run_cli, tmp_path):
    from matplotlib.image import imread

    from vaelab.eval.classifier import load_classifier
    from vaelab.viz import tile_origin

    out = tmp_path / "sevens.png"
    result = run_cli("sample", "--pretrained", "cvae-2d", "--label", "7", "-n", "64", "--scale", "1", "-o", out)
    assert result.returncode == 0, result.stderr
    grid = imread(out)[..., 0]  # a grey grid written through the gray colormap: R = G = B = the pixel
    tiles = [grid[top : top + 28, left : left + 28] for top, left in (tile_origin(i, 8, 28, 28) for i in range(64))]
    predicted = load_classifier()(torch.as_tensor(np.stack(tiles))[:, None]).argmax(1)
    assert (predicted == 7).float().mean().item() >= 0.95


def test_the_shipped_cvae_repeats_its_recorded_label_accuracy():
    import vaelab.pretrained
    from vaelab.eval.bound import evaluation_seed
    from vaelab.eval.conditional import label_accuracy

    folder = vaelab.pretrained.path("cvae-2d")
    recorded = json.loads((folder / "results.json").read_text())["label_accuracy"]
    model = vaelab.pretrained.load("cvae-2d")
    measured = label_accuracy(model, recorded["label_samples"], evaluation_seed(0), dataset="mnist")
    assert recorded["label_samples"] == 10_000 and recorded["label_accuracy"] >= 0.95
    assert measured["label_accuracy"] == pytest.approx(recorded["label_accuracy"], abs=1e-4)
