"""The hierarchical family: its bound, its importance weights against a hand-written density, the ladder's
merge, what it refuses, and a run through the CLI with per-layer evaluation and the independent NLL check."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from safetensors.torch import load_file

from vaelab.config import RunConfig
from vaelab.distributions.posteriors.diagonal import DiagonalNormal
from vaelab.errors import VaelabError
from vaelab.model import Context, build_model, make_objective
from vaelab.model.hierarchical.model import precision_weighted

ROOT = Path(__file__).resolve().parents[1]
INFERENCES = ("bottom-up", "ladder")
SIZES = (8, 4)


def hierarchical_config(
    inference: str = "bottom-up", sizes: tuple[int, ...] = SIZES, batch_norm: bool = False
) -> RunConfig:
    config = RunConfig()
    config.model.batch_norm = batch_norm
    config.model.family = "hierarchical"
    config.model.arch = "mlp"
    config.model.hidden = [32]
    config.model.activation = "tanh"
    config.model.stochastic_layers = list(sizes)
    config.model.latent_dim = sizes[-1]
    config.model.layer_hidden = [16]
    config.model.inference = inference
    return config.validate()


def build(inference: str, sizes: tuple[int, ...] = SIZES, seed: int = 0, batch_norm: bool = False):
    torch.manual_seed(seed)
    model = build_model(hierarchical_config(inference, sizes, batch_norm).model, (1, 28, 28)).eval()
    with torch.no_grad():  # batch norms as if trained: statistics and scales away from 0 and 1
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            for tensor in (norm.running_mean, norm.bias):
                tensor.normal_(0, 0.5)
            for tensor in (norm.running_var, norm.weight):
                tensor.uniform_(0.5, 2.0)
    return model


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


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("inference", INFERENCES)
def test_the_log_weights_match_a_plain_pytorch_density(inference, batch_norm):
    """The model's log p(x, z_1..L) - log q(z_1..L | x) against benchmarks/independent_nll.py's, written out
    term by term from the saved weights, with the very same noise (per-example generators); with batch
    normalisation, its test-time form (running statistics) written out there too."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import independent_nll
    finally:
        sys.path.pop(0)
    model, x = build(inference, (8, 6, 3), batch_norm=batch_norm), images(3)
    k, width = 7, 8 + 6 + 3
    ctx = Context(generators=[torch.Generator().manual_seed(10 + b) for b in range(len(x))])
    with torch.no_grad():
        ours = model.log_weights(x, k, ctx).log_w
        weights = model.state_dict()
        assert batch_norm == any(name.endswith("running_mean") for name in weights)
        described = hierarchical_config(inference, (8, 6, 3), batch_norm).to_dict()["model"]
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


def test_batch_norm_trains_on_the_batchs_statistics_and_tests_on_the_running_ones():
    model, x = build("ladder", batch_norm=True), images(32)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    # every hidden layer of every MLP: encoder and decoder (one each), up and down (one each)
    assert len(norms) == 4
    first = norms[0]
    before = first.running_mean.clone()
    seen = []
    handle = first.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    model.train()
    with torch.no_grad():
        model.elbo(x, Context())
    h, out = seen[-1]
    normalised = (out - first.bias) / first.weight
    torch.testing.assert_close(normalised.mean(0), torch.zeros(h.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.var(0, unbiased=False), torch.ones(h.shape[1]), atol=1e-3, rtol=0)
    torch.testing.assert_close(first.running_mean, 0.9 * before + 0.1 * h.mean(0))
    # one image in training (a last batch, a shard of one) is normalised as at test time, not refused
    with torch.no_grad():
        single = model.elbo(x[:1], Context(generators=[torch.Generator().manual_seed(4)]))
        model.eval()
        tested = model.elbo(x[:1], Context(generators=[torch.Generator().manual_seed(4)]))
    handle.remove()
    torch.testing.assert_close(single.reconstruction, tested.reconstruction)
    torch.testing.assert_close(single.kl, tested.kl)


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
    with pytest.raises(VaelabError, match="objective.gradient = dreg is not supported with model.batch_norm"):
        make_objective("iwae", k=3, gradient="dreg").check_model(build("ladder", batch_norm=True))
    make_objective("iwae", k=3, gradient="dreg").check_model(build("ladder"))
    make_objective("iwae", k=3).check_model(build("ladder", batch_norm=True))
    config = hierarchical_config(batch_norm=True)
    config.model.arch = "conv"
    with pytest.raises(VaelabError, match="model.batch_norm = true needs model.arch = mlp"):
        config.validate()


# --- the doubly reparameterised gradient (DReG, Tucker et al. 2019) ------------------------------------


def _independent_nll():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import independent_nll
    finally:
        sys.path.pop(0)
    return independent_nll


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("inference", INFERENCES)
def test_dreg_has_the_iwae_bounds_value_and_log_weights(inference):
    model, x, k = build(inference, (8, 6, 3)), images(4), 5
    path_calls = []

    def path(z):
        path_calls.append(z.shape)
        return z * 1.0

    torch.manual_seed(3)
    plain = model.log_weights(x, k, Context()).log_w
    torch.manual_seed(3)
    on_path = model.log_weights(x, k, Context(), path).log_w
    assert path_calls == [(k, len(x), 8 + 6 + 3)]  # every layer's codes pass through it, once, together
    torch.testing.assert_close(on_path, plain, rtol=0, atol=0)
    torch.manual_seed(3)
    iwae = make_objective("iwae", k=k)(model, x)
    torch.manual_seed(3)
    dreg = make_objective("iwae", k=k, gradient="dreg")(model, x)
    for name in ("loss", "total", "reconstruction", "kl"):
        torch.testing.assert_close(getattr(dreg, name), getattr(iwae, name), rtol=0, atol=0, msg=name)


def _two_layers_written_out(inference: str, w: dict, x: torch.Tensor, eps: torch.Tensor):
    """A two-layer model from its weights in plain PyTorch: the codes made from ``eps``, log q(z_1, z_2 | x)
    and log p(x, z_1, z_2) at any codes, each with the weights it is given."""
    nll = _independent_nll()

    def net(w, prefix, h):
        return nll.mlp(w, prefix, h, torch.tanh).chunk(2, dim=-1)

    def up_terms(w):  # bottom-up: q(z_1 | x); ladder: both layers' Gaussian terms from x
        first = net(w, "encoder.net.1.", x.flatten(1))
        return [first, net(w, "up.0.", first[0])] if inference == "ladder" else [first]

    def merged(w, z2):  # the ladder's q(z_1 | x, z_2): the up term times p(z_1 | z_2)
        (mu_u, log_var_u), (mu_p, log_var_p) = up_terms(w)[0], net(w, "down.0.", z2)
        precision_u, precision_p = (-log_var_u).exp(), (-log_var_p).exp()
        variance = 1 / (precision_u + precision_p)
        return (mu_u * precision_u + mu_p * precision_p) * variance, variance.log()

    def sample(w):
        e1, e2 = eps.split(SIZES, dim=-1)
        if inference == "bottom-up":
            mu, log_var = up_terms(w)[0]
            z1 = mu + (0.5 * log_var).exp() * e1
            mu, log_var = net(w, "up.0.", z1)
            return z1, mu + (0.5 * log_var).exp() * e2
        mu, log_var = up_terms(w)[1]
        z2 = mu + (0.5 * log_var).exp() * e2
        mu, log_var = merged(w, z2)
        return mu + (0.5 * log_var).exp() * e1, z2

    def log_q(w, z1, z2):
        if inference == "bottom-up":
            return nll.log_normal(z1, *up_terms(w)[0]) + nll.log_normal(z2, *net(w, "up.0.", z1))
        return nll.log_normal(z2, *up_terms(w)[1]) + nll.log_normal(z1, *merged(w, z2))

    def log_p(w, z1, z2):
        logits = nll.mlp(w, "decoder.net.0.", z1, torch.tanh)
        log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.flatten(1).expand_as(logits), reduction="none"
        ).sum(-1)
        zero = torch.zeros(())
        return log_px + nll.log_normal(z1, *net(w, "down.0.", z2)) + nll.log_normal(z2, zero, zero)

    return sample, log_q, log_p


@pytest.mark.parametrize("inference", INFERENCES)
def test_dreg_gradients_are_tucker_et_als_formula_written_out(inference):
    """Every weight's DReG gradient against Tucker et al.'s eq. 6 computed here independently:
    -mean_b [sum_i w~_i^2 (d log w_i / d z_i)(d z_i / d psi) + sum_i w~_i d log p_psi(x, z_i) / d psi],
    where d log w / d z is taken with every weight fixed (so through q(z_2 | z_1)'s dependence on z_1,
    and for the ladder through its merge's p(z_1 | z_2)), d z / d psi follows the whole sampling chain,
    and the second term (at fixed z) is the decoder's and p's plain IWAE gradient. The ladder's top-down
    net makes both p and q, and gets both terms."""
    model, x, k = build(inference).double(), images(3).double(), 6  # float64: agreement to rounding
    torch.manual_seed(7)
    dreg = _grads(model, make_objective("iwae", k=k, gradient="dreg")(model, x).loss)
    torch.manual_seed(7)
    plain = _grads(model, make_objective("iwae", k=k)(model, x).loss)

    torch.manual_seed(7)
    eps = torch.empty((k, len(x), sum(SIZES)), dtype=x.dtype).normal_()  # as Context.noise draws it
    names, weights = zip(*model.named_parameters())
    w = dict(zip(names, weights))
    sample, log_q, log_p = _two_layers_written_out(inference, w, x, eps)
    zs = sample(w)
    at = [z.detach().requires_grad_() for z in zs]
    log_w = log_p(w, *at) - log_q(w, *at)
    normalised = torch.softmax(log_w.detach(), 0)
    by_z = torch.autograd.grad(log_w.sum(), at)  # with every weight held fixed
    path = torch.autograd.grad(zs, weights, [normalised.unsqueeze(-1) ** 2 * g for g in by_z], allow_unused=True)
    direct = torch.autograd.grad((normalised * log_p(w, *at)).sum(), weights, allow_unused=True)
    expected = {
        n: -sum(g for g in (a, b) if g is not None) / len(x)
        for n, a, b in zip(names, path, direct)
        if a is not None or b is not None
    }

    assert dreg.keys() == expected.keys() == plain.keys()
    for name, grad in dreg.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-9, atol=1e-11, msg=name)
    # (3) the decoder's gradient is the plain IWAE one; so is p's top-down net's where q does not use it
    generative = ("decoder.", "down.") if inference == "bottom-up" else ("decoder.",)
    for name in dreg:
        if name.startswith(generative):
            torch.testing.assert_close(dreg[name], plain[name], rtol=1e-9, atol=1e-11, msg=name)
    differs = ("encoder.", "up.") if inference == "bottom-up" else ("encoder.", "up.", "down.")
    for prefix in differs:
        assert any(not torch.allclose(dreg[n], plain[n]) for n in dreg if n.startswith(prefix)), prefix


@pytest.mark.parametrize("inference", INFERENCES)
def test_dreg_is_unbiased_through_the_hierarchy(inference):
    """Per image, DReG's and the plain estimator's gradients w.r.t. the encoder's output (the first
    layer's Gaussian: its q, or the ladder's up term) agree in expectation for the k = 10 bound, and
    DReG's differ sample by sample. (A subtly wrong DReG -- q's (mu, sigma) stopped instead of its
    weights -- is biased by less than this test resolves; the formula test above is what catches it.)"""
    model, k, reps = build(inference), 10, 3000
    x = images(1).repeat(reps, 1, 1, 1)  # each row an independent estimate for the same image
    outputs = []
    model.encoder.register_forward_hook(lambda module, args, out: outputs.append(out))
    per_row = {}
    for gradient in ("reparam", "dreg"):
        torch.manual_seed(8)
        terms = make_objective("iwae", k=k, gradient=gradient)(model, x)
        (grad,) = torch.autograd.grad(terms.loss * reps, outputs.pop())
        per_row[gradient] = grad.double()
    mean = {g: v.mean(0) for g, v in per_row.items()}
    se = {g: v.std(0) / math.sqrt(reps) for g, v in per_row.items()}
    assert ((mean["dreg"] - mean["reparam"]).abs() < 4 * torch.sqrt(se["dreg"] ** 2 + se["reparam"] ** 2)).all()
    assert not torch.allclose(per_row["dreg"], per_row["reparam"])


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


@pytest.mark.parametrize(
    "inference, extra",
    [
        ("bottom-up", []),
        ("ladder", []),
        # Sønderby et al.'s ladder: batch normalisation in the MLPs and a KL warm-up
        ("ladder", ["--set", "model.batch_norm=true", "--set", "objective.kl_warmup_epochs=1"]),
    ],
    ids=["bottom-up", "ladder", "ladder-batch-norm"],
)
def test_a_run_from_the_cli_has_per_layer_analysis_and_an_nll_the_independent_check_agrees_with(
    tmp_path, run_cli, cli_env, inference, extra
):
    run = tmp_path / "run"
    trained = run_cli("train", "--out", run, *QUICK, "--set", f"model.inference={inference}", *extra, timeout=300)
    assert trained.returncode == 0, trained.stderr
    if extra:  # the trained statistics are what the run stores
        stored = load_file(run / "model.safetensors")
        assert stored["up.0.1.running_var"].ne(1).all() and stored["up.0.1.num_batches_tracked"] > 0
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


@pytest.mark.parametrize("inference", INFERENCES)
def test_dreg_trains_from_the_cli(tmp_path, run_cli, inference):
    run = tmp_path / "run"
    trained = run_cli(
        "train", "--out", run, *QUICK, "--set", f"model.inference={inference}", "--no-figures",
        "--objective", "iwae", "--k", "3", "--gradient", "dreg", "--set", "train.epochs=1", timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert tomllib.loads((run / "config.toml").read_text())["objective"]["gradient"] == "dreg"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "validation"), (1, "test")]
    assert all(math.isfinite(r["total"]) for r in records), records


def _independently_checkable(name: str) -> bool:
    import vaelab.pretrained

    config = json.loads((vaelab.pretrained.path(name) / "model.json").read_text())["config"]
    model = config["model"]
    return (
        config["data"]["name"] in ("mnist", "fashion-mnist")  # not a data set that must be made first
        and model.get("family", "vae") in ("vae", "hierarchical")
        and model["arch"] in ("mlp", "conv")  # the architectures benchmarks/independent_nll.py rebuilds
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
