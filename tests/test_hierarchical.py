"""The hierarchical family: its bound, its importance weights against a hand-written density, the ladder's
merge, what it refuses, and a run through the CLI with per-layer evaluation and the independent NLL check."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelab.config import RunConfig
from vaelab.distributions.posteriors.diagonal import DiagonalNormal
from vaelab.errors import VaelabError
from vaelab.model import Context, Unsupported, build_model, make_objective
from vaelab.model.hierarchical.model import precision_weighted

ROOT = Path(__file__).resolve().parents[1]
INFERENCES = ("bottom-up", "ladder")
SIZES = (8, 4)


def hierarchical_config(inference: str = "bottom-up", sizes: tuple[int, ...] = SIZES) -> RunConfig:
    config = RunConfig()
    config.model.family = "hierarchical"
    config.model.arch = "mlp"
    config.model.hidden = [32]
    config.model.activation = "tanh"
    config.model.stochastic_layers = list(sizes)
    config.model.latent_dim = sizes[-1]
    config.model.layer_hidden = [16]
    config.model.inference = inference
    return config.validate()


def build(inference: str, sizes: tuple[int, ...] = SIZES, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(hierarchical_config(inference, sizes).model, (1, 28, 28)).eval()


def images(n: int = 5, seed: int = 1) -> torch.Tensor:
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) > 0.7).float()


@pytest.mark.parametrize("inference", INFERENCES)
@pytest.mark.parametrize("sizes", [(8, 4), (8, 6, 3)])
def test_the_kl_is_the_sum_of_the_layers_terms(inference, sizes):
    model, x = build(inference, sizes), images()
    with torch.no_grad():
        parts = model.elbo(x, Context())
    assert parts.kl_per_dim.shape == (len(x), sum(sizes))
    assert sorted(parts.extra) == [f"kl_layer{i + 1}" for i in range(len(sizes))]
    torch.testing.assert_close(parts.kl, sum(parts.extra.values()))
    torch.testing.assert_close(parts.kl, parts.kl_per_dim.sum(-1))
    assert [m.shape[-1] for m in model.layer_means(x)] == list(sizes)


@pytest.mark.parametrize("inference", INFERENCES)
def test_the_importance_weights_and_the_elbo_estimate_the_same_bound(inference):
    """E_q[log w] is the ELBO: the mean log-weight over many samples and the mean one-sample ELBO
    (closed-form KLs where the model has them) agree within their Monte Carlo error."""
    model, x = build(inference), images(3)
    samples = 4000
    with torch.no_grad():
        torch.manual_seed(2)
        log_w = model.log_weights(x, samples, Context()).log_w  # samples x B
        torch.manual_seed(3)
        repeated = x.repeat(samples, 1, 1, 1)
        parts = model.elbo(repeated, Context())
        elbo = -(parts.reconstruction + parts.kl).view(samples, len(x))
    error = (log_w.var(0) / samples + elbo.var(0) / samples).sqrt()
    assert ((log_w.mean(0) - elbo.mean(0)).abs() < 4 * error).all(), (log_w.mean(0), elbo.mean(0), error)
    # and the k-sample bound lies above the ELBO (Burda et al.'s ordering)
    iwae = torch.logsumexp(log_w, 0) - math.log(samples)
    assert (iwae > elbo.mean(0)).all()


def test_the_ladder_merge_is_the_product_of_the_two_gaussians():
    g = torch.Generator().manual_seed(0)
    up = DiagonalNormal(torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.2)
    down = DiagonalNormal(torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.2)
    merged = precision_weighted(up, down)
    z = torch.randn(200, 6, generator=g) * 3
    # N(z; up) N(z; down) / N(z; merged) does not depend on z
    log_ratio = up.log_prob(z) + down.log_prob(z) - merged.log_prob(z)
    assert log_ratio.std() < 1e-4


@pytest.mark.parametrize("inference", INFERENCES)
def test_the_log_weights_match_a_plain_pytorch_density(inference):
    """The model's log p(x, z_1..L) - log q(z_1..L | x) against benchmarks/independent_nll.py's, written out
    term by term from the saved weights, with the very same noise (per-example generators)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import independent_nll
    finally:
        sys.path.pop(0)
    model, x = build(inference, (8, 6, 3)), images(3)
    k, width = 7, 8 + 6 + 3
    ctx = Context(generators=[torch.Generator().manual_seed(10 + b) for b in range(len(x))])
    with torch.no_grad():
        ours = model.log_weights(x, k, ctx).log_w
        weights = model.state_dict()
        described = hierarchical_config(inference, (8, 6, 3)).to_dict()["model"]
        for b in range(len(x)):
            eps = torch.randn((k, width), generator=torch.Generator().manual_seed(10 + b))
            theirs = independent_nll.hierarchical_log_weights(
                weights,
                described,
                x[b : b + 1],
                eps,
                lambda v: independent_nll.mlp(weights, "encoder.net.1.", v.flatten(1), torch.tanh),
                lambda z: independent_nll.mlp(weights, "decoder.net.0.", z, torch.tanh),
                torch.tanh,
            )
            torch.testing.assert_close(ours[:, b], theirs, rtol=1e-5, atol=1e-3)


def test_what_the_family_refuses():
    with pytest.raises(VaelabError, match="two or more latent sizes"):
        build_model(hierarchical_config(sizes=(8,)).model, (1, 28, 28))
    config = hierarchical_config()
    config.model.latent_dim = 2
    with pytest.raises(VaelabError, match="top layer's size: set it to 4"):
        build_model(config.model, (1, 28, 28))
    config = hierarchical_config()
    config.model.prior = "mog"
    with pytest.raises(VaelabError, match="model.prior = mog does not apply to the hierarchical family"):
        build_model(config.model, (1, 28, 28))
    with pytest.raises(VaelabError, match="model.inference must be one of"):
        config.model.inference = "sideways"
        config.validate()
    with pytest.raises(Unsupported, match="doubly reparameterised"):
        make_objective("iwae", k=2, gradient="dreg")(build("ladder"), images())


def test_training_lowers_the_bound_and_the_figures_decode_through_every_layer():
    model, x = build("ladder"), images(64)
    model.train()
    objective = make_objective("iwae", k=5)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        terms = objective(model, x, Context())
        terms.loss.backward()
        optimiser.step()
        losses.append(terms.loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 20
    from vaelab.viz.hierarchy import layer_reconstructions, top_fixed_samples

    assert top_fixed_samples(model, rows=2, columns=3).axes
    assert layer_reconstructions(model, x, n=4).axes
    # a reconstruction through layer 1 is the model's reconstruction; through the top, the decoded top code
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct_through(x[:4], 1), model.reconstruct(x[:4]))
        torch.testing.assert_close(model.reconstruct_through(x[:4], 2), model.decode(model.encode(x[:4])))


QUICK = [
    "--set", "model.family=hierarchical", "--set", "model.arch=mlp", "--set", "model.hidden=[64]",
    "--set", "model.activation=tanh", "--set", "model.stochastic_layers=[10,4]", "--set", "model.latent_dim=4",
    "--set", "model.layer_hidden=[32]", "--set", "data.binarize=dynamic", "--set", "data.train_limit=600",
    "--set", "data.test_limit=200", "--set", "data.validation_size=100", "--set", "train.epochs=2",
    "--set", "train.threads=1",
]  # fmt: skip


@pytest.mark.parametrize("inference", INFERENCES)
def test_a_run_from_the_cli_has_per_layer_analysis_and_an_nll_the_independent_check_agrees_with(
    tmp_path, run_cli, cli_env, inference
):
    run = tmp_path / "run"
    trained = run_cli("train", "--out", run, *QUICK, "--set", f"model.inference={inference}", timeout=300)
    assert trained.returncode == 0, trained.stderr
    figures = {p.name for p in (run / "figures").iterdir()}
    assert {"top_fixed_samples.png", "layer_reconstructions.png", "samples.png"} <= figures
    evaluated = run_cli("eval", run, "--json", "--no-write", "--fd-samples", "200", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert [layer["size"] for layer in report["layers"]] == [10, 4]
    assert sum(layer["kl"] for layer in report["layers"]) == pytest.approx(report["kl"], rel=1e-5)
    text = run_cli("eval", run, "--no-write", "--fd-samples", "200", timeout=300)
    assert "layer 1 (10 units)" in text.stdout and "layer 2 (4 units)" in text.stdout

    ours = run_cli("eval", run, "--nll", "--k", "500", "--limit", "30", "--json", "--fd-samples", "100", timeout=300)
    assert ours.returncode == 0, ours.stderr
    theirs = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "independent_nll.py"), str(run), "--k", "500", "--limit", "30"],
        capture_output=True, text=True, env=cli_env, timeout=300,
    )  # fmt: skip
    assert theirs.returncode == 0, theirs.stderr
    nll, check = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert abs(nll["nll"] - check["nll"]) < nll["nll_stderr"], (nll, check)


def _independently_checkable(name: str) -> bool:
    import vaelab.pretrained

    model = json.loads((vaelab.pretrained.path(name) / "model.json").read_text())["config"]["model"]
    return (
        model.get("family", "vae") in ("vae", "hierarchical")
        and model["prior"] == "standard"
        and model["likelihood"] == ("bernoulli")
    )


def _pretrained_names() -> list[str]:
    import vaelab.pretrained

    return [name for name in vaelab.pretrained.available() if _independently_checkable(name)]


@pytest.mark.parametrize("name", _pretrained_names())
def test_a_shipped_models_nll_is_what_the_independent_check_computes(name, run_cli, cli_env):
    """vaelab's estimator and benchmarks/independent_nll.py (plain PyTorch from the safetensors file) on
    the same test images, each with its own noise: they agree well within the standard error over images."""
    import vaelab.pretrained

    args = ("--k", "500", "--limit", "20")
    ours = run_cli("eval", "--pretrained", name, "--nll", *args, "--json", "--fd-samples", "100", timeout=300)
    assert ours.returncode == 0, ours.stderr
    theirs = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "independent_nll.py"), str(vaelab.pretrained.path(name)), *args],
        capture_output=True, text=True, env=cli_env, timeout=300,
    )  # fmt: skip
    assert theirs.returncode == 0, theirs.stderr
    nll, check = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert abs(nll["nll"] - check["nll"]) < nll["nll_stderr"], (nll, check)
