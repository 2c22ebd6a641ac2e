"""The VQ-VAE family: quantisation, the straight-through gradient, the EMA codebook and its restarts, the
codebook's perplexity, the prior's autoregressive mask, the bound's arithmetic, and two-stage training
through ``vaelab train`` (with a resume across the stage boundary), ``vaelab sample`` and ``vaelab eval``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import in_process_cli as _main
from tests.conftest import set_args
from vaelab.config import ModelConfig, RunConfig, apply_overrides
from vaelab.errors import VaelabError
from vaelab.model import Context, build_model, make_objective
from vaelab.model.codebook import perplexity, usage_summary
from vaelab.model.vqvae import CodePrior, VectorQuantizer
from vaelab.model.vqvae.model import LAPLACE

SMALL = dict(family="vqvae", codebook_size=8, code_dim=4, prior_width=16, prior_layers=2, prior_epochs=1)
TINY_VQ = [
    "model.family=vqvae",
    "model.codebook_size=16",
    "model.code_dim=4",
    "model.prior_width=16",
    "model.prior_layers=1",
    "model.prior_epochs=2",
    "data.binarize=dynamic",
    "data.train_limit=256",
    "data.validation_size=64",
    "data.test_limit=64",
    "train.batch_size=64",
    "train.eval_batch_size=64",
    "train.epochs=2",
    "train.threads=1",
]


def _model(**changes):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SMALL, **changes}), (1, 28, 28), 8)


def _images(n: int = 8) -> torch.Tensor:
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()


# --- the codebook -----------------------------------------------------------------------------------


def test_quantisation_picks_the_nearest_code():
    quantizer = VectorQuantizer(16, 3, 0.99)
    z = torch.randn(200, 3)
    brute = torch.cdist(z, quantizer.codebook).argmin(1)
    assert torch.equal(quantizer.nearest(z), brute)
    assert torch.equal(quantizer.nearest(quantizer.codebook), torch.arange(16))  # every code is its own nearest


def test_the_straight_through_gradient_reaches_the_encoder():
    model = _model(commitment=0.0)  # only the reconstruction's gradient
    model.train()
    x = _images()
    z_e = model.z_e(x)
    z_e.retain_grad()
    codes = model.quantize(z_e)
    e = model.vectors(codes)
    z_q = z_e + (e - z_e).detach()
    z_q.retain_grad()
    (-model.p_x(z_q).log_prob(x)).sum().backward()
    # the decoder's gradient at the quantised grid is handed to the encoder's output unchanged
    assert torch.equal(z_e.grad, z_q.grad) and z_e.grad.abs().sum() > 0
    model.zero_grad()
    make_objective("elbo")(model, x, Context()).loss.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in model.prior.parameters())  # the first stage leaves the prior alone


def test_the_ema_update_matches_a_hand_computation():
    quantizer = VectorQuantizer(2, 1, decay=0.5)
    quantizer.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    quantizer.sums.copy_(quantizer.codebook)  # m_k = N_k e_k with N_k = 1
    z = torch.tensor([[1.0], [2.0], [9.0]])
    codes = quantizer.nearest(z)
    assert codes.tolist() == [0, 0, 1]
    quantizer.ema_update(z, codes)
    # N = 0.5 * 1 + 0.5 * (2, 1); m = 0.5 * (0, 10) + 0.5 * (1 + 2, 9)
    counts, sums = torch.tensor([1.5, 1.0]), torch.tensor([[1.5], [9.5]])
    n = counts.sum()
    smoothed = (counts + LAPLACE) / (n + 2 * LAPLACE) * n
    assert torch.allclose(quantizer.counts, counts) and torch.allclose(quantizer.sums, sums)
    assert torch.allclose(quantizer.codebook, sums / smoothed[:, None])
    assert torch.allclose(quantizer.codebook, torch.tensor([[1.0], [9.5]]), atol=1e-4)


def test_dead_codes_are_restarted_at_encoder_outputs():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(4, 2, decay=0.9)
    quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0]]))
    quantizer.sums.copy_(quantizer.codebook)
    z = torch.randn(32, 2) * 0.1  # every output next to code 0
    codes = quantizer.nearest(z)
    assert (codes == 0).all()
    quantizer.ema_update(z, codes)
    assert (quantizer.counts[1:] < 1).all()  # 0.9 after one unused step: below one use per batch
    restarted = quantizer.restart_dead(z)
    assert restarted.tolist() == [1, 2, 3]
    for k in (1, 2, 3):  # each now sits on one of the batch's encoder outputs, its statistics reset there
        assert (quantizer.codebook[k] == z).all(1).any()
        assert quantizer.counts[k] == 1.0 and torch.equal(quantizer.sums[k], quantizer.codebook[k])
    assert quantizer.restart_dead(z).numel() == 0  # nothing left to restart until usage falls again


def test_perplexity_of_known_usages():
    assert perplexity(torch.tensor([5, 5, 5, 5, 0, 0, 0, 0])).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([7, 0, 0])).item() == pytest.approx(1.0)
    assert perplexity(torch.tensor([1, 3])).item() == pytest.approx(
        math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    )
    summary = usage_summary(torch.tensor([5, 5, 0, 0]))
    assert summary == {
        "code_perplexity": pytest.approx(2.0),
        "codes_used": 2,
        "codebook_size": 4,
        "codes_used_fraction": 0.5,
    }


# --- the prior ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_the_prior_is_autoregressive(training):
    torch.manual_seed(0)
    prior = CodePrior(codes=6, positions=9, width=16, layers=2, heads=4).train(training)
    codes = torch.randint(6, (4, 9))
    with torch.no_grad():
        logits = prior(codes)
        for i in range(9):
            later = codes.clone()
            later[:, i:] = (later[:, i:] + 1 + torch.randint(5, later[:, i:].shape)) % 6  # every code >= i changed
            assert torch.allclose(prior(later)[:, i], logits[:, i], atol=1e-5), f"position {i} reads a code >= {i}"
            if i > 0:  # and it does read the codes before it
                earlier = codes.clone()
                earlier[:, i - 1] = (earlier[:, i - 1] + 1) % 6
                assert not torch.allclose(prior(earlier)[:, i], logits[:, i])
        assert torch.allclose(prior(codes[:, :5]), logits[:, :5], atol=1e-5)  # a prefix alone gives the same


def test_prior_samples_are_codes():
    torch.manual_seed(0)
    prior = CodePrior(codes=6, positions=9, width=16, layers=1, heads=4).eval()
    a = prior.sample(5, torch.Generator().manual_seed(3))
    b = prior.sample(5, torch.Generator().manual_seed(3))
    assert a.shape == (5, 9) and a.dtype == torch.long and a.min() >= 0 and a.max() < 6 and torch.equal(a, b)


# --- the bound ----------------------------------------------------------------------------------------


def test_the_bound_is_reconstruction_plus_the_priors_code_length():
    from vaelab.eval import estimate_log_likelihood

    model = _model().eval()
    x = _images()
    codes = model.quantize(model.z_e(x))
    log_px = model.p_x(model.vectors(codes)).log_prob(x)
    # first stage: the uniform prior, P log K nats for every grid
    uniform = model.log_likelihood_bound(x, Context())
    assert torch.allclose(uniform, log_px - 49 * math.log(8), atol=1e-4)
    model.enter_stage(1)
    learned = model.log_likelihood_bound(x, Context())
    assert torch.allclose(learned, log_px + model.prior.log_prob(codes), atol=1e-4)
    parts = model.elbo(x, Context())
    assert torch.allclose(parts.reconstruction + parts.kl, -learned, atol=1e-4)
    result = estimate_log_likelihood(model, [x], k=5000)
    assert result["k"] == 1 and "one-hot" in result["nll_note"]
    assert result["nll"] == pytest.approx(-learned.double().mean().item(), rel=1e-6)
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)))


def test_stages_freeze_what_they_do_not_train():
    model = _model()
    assert [s.name for s in model.stages()] == ["autoencoder", "prior"] and model.stages()[1].epochs == 1
    assert not any(p.requires_grad for p in model.prior.parameters())
    model.enter_stage(1)
    assert all(p.requires_grad for p in model.prior.parameters())
    assert not any(p.requires_grad for m in (model.encoder, model.decoder) for p in m.parameters())
    before = model.quantizer.codebook.clone()
    model.train()
    model.elbo(_images(), Context())
    assert torch.equal(model.quantizer.codebook, before)  # the codebook is frozen in the prior's stage
    assert [s.name for s in _model(prior_epochs=0).stages()] == ["autoencoder"]
    with pytest.raises(VaelabError, match="no stage 2"):
        model.enter_stage(2)


# --- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.family=vqvae", "model.codebook_size=1"], "model.codebook_size must be between 2"),
        (["model.family=vqvae", "model.code_dim=0"], "model.code_dim must be between 1"),
        (["model.family=vqvae", "model.commitment=-1"], "model.commitment must be >= 0"),
        (["model.family=vqvae", "model.codebook_decay=1.0"], r"model.codebook_decay must be in \[0, 1\)"),
        (["model.family=vqvae", "model.prior_epochs=-1"], "model.prior_epochs must be >= 0"),
        (["model.family=vqvae", "model.prior_width=30"], "divisible by the prior's 4 attention heads"),
        (["model.family=vqvae", "model.prior_layers=0"], "model.prior_layers must be between 1"),
        (["model.codebook_size=64"], "model.codebook_size applies to model.family = vqvae"),
    ],
)
def test_config_refusals(overrides, message):
    with pytest.raises(VaelabError, match=message):
        apply_overrides(RunConfig(), overrides)


def test_slot_keys_are_refused_by_the_family():
    with pytest.raises(VaelabError, match="model.latent_dim does not apply to the vqvae family"):
        build_model(ModelConfig(family="vqvae", latent_dim=8), (1, 28, 28))
    with pytest.raises(VaelabError, match="height and width divisible by 4"):
        build_model(ModelConfig(family="vqvae"), (1, 30, 30))


# --- through the command line -------------------------------------------------------------------------


def test_vaelab_list_names_it(monkeypatch, capsys):
    result = _main(monkeypatch, capsys, "list", "--json")
    assert result.returncode in (0, None)
    assert "vqvae" in [entry["name"] for entry in json.loads(result.stdout)["families"]]


def test_a_bad_key_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    result = _main(
        monkeypatch, capsys, "train", "--out", tmp_path / "r", *set_args(["model.family=vqvae", "model.prior_width=30"])
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "model.prior_width" in result.stderr and not (tmp_path / "r").exists()


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vqvae") / "run"
    code = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--out", str(out), *set_args(TINY_VQ)],
        capture_output=True,
        text=True,
    )
    assert code.returncode == 0, code.stderr
    return out


def test_two_stages_through_vaelab_train(two_stage_run):
    records = _records(two_stage_run)
    train = [r for r in records if r["split"] == "train"]
    assert [(r["epoch"], r["stage"]) for r in train] == [
        (1, "autoencoder"),
        (2, "autoencoder"),
        (3, "prior"),
        (4, "prior"),
    ]
    uniform = 49 * math.log(16)
    assert all(r["kl"] == pytest.approx(uniform) for r in train[:2])  # the uniform prior's code length
    assert train[3]["kl"] < uniform  # the learned prior's is shorter
    validation = [r for r in records if r["split"] == "validation"]
    assert validation[2]["reconstruction"] == validation[3]["reconstruction"]  # the autoencoder is frozen
    test = records[-1]
    assert test["split"] == "test" and {"perplexity", "codes_used", "commitment"} <= set(test)
    assert 1 <= test["perplexity"] <= 16 and 0 < test["codes_used"] <= 1
    figures = {p.name for p in (two_stage_run / "figures").iterdir()}
    assert {"reconstructions.png", "samples.png", "code_usage.png"} <= figures and "latent_manifold.png" not in figures
    assert "stages: autoencoder (epochs 1-2), prior (epochs 3-4)" in (two_stage_run / "report.md").read_text()


def test_the_trained_model_samples_and_evaluates(two_stage_run, monkeypatch, capsys, tmp_path):
    from vaelab.model import load_model

    model, _, _ = load_model(two_stage_run)
    assert model.learned_prior  # the saved model remembers its stage: it samples from the learned prior
    images = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    result = _main(monkeypatch, capsys, "sample", two_stage_run, "-n", "6", "--out", tmp_path / "s.png")
    assert result.returncode in (0, None) and (tmp_path / "s.png").stat().st_size > 0
    result = _main(monkeypatch, capsys, "eval", two_stage_run, "--nll", "--json", "--no-write", "--fd-samples", "20")
    assert result.returncode in (0, None), result.stderr
    evaluation = json.loads(result.stdout)
    test = _records(two_stage_run)[-1]
    assert evaluation["total"] == pytest.approx(test["total"], abs=1e-3)
    assert evaluation["nll"] == pytest.approx(evaluation["total"], rel=1e-5) and evaluation["k"] == 1
    assert evaluation["bits_per_dim"] == pytest.approx(evaluation["nll"] / (784 * math.log(2)))
    assert 0 < evaluation["codes_used_fraction"] <= 1 and evaluation["codebook_size"] == 16


def test_resume_across_the_stage_boundary(two_stage_run, tmp_path, monkeypatch, capsys):
    from vaelab.train import Trainer

    for stop_after in (2, 3):  # at the boundary (the first stage's last checkpoint), and inside the prior's stage
        out = tmp_path / f"stopped-{stop_after}"
        trainer = Trainer(apply_overrides(RunConfig(), TINY_VQ), out, figures=False)
        real = trainer.train_epoch

        def stopping(*args, _real=real, _trainer=trainer, _stop=stop_after, **kwargs):
            if _trainer.epoch == _stop:
                raise KeyboardInterrupt
            return _real(*args, **kwargs)

        trainer.train_epoch = stopping
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(progress=False)
        result = _main(monkeypatch, capsys, "train", "--resume", out, "--no-figures")
        assert result.returncode in (0, None), result.stderr
        assert f"after epoch {stop_after}" in result.stderr
        resumed, whole = _records(out), _records(two_stage_run)
        assert [(r["epoch"], r["split"]) for r in resumed] == [(r["epoch"], r["split"]) for r in whole]
        for a, b in zip(resumed, whole):
            assert a["total"] == pytest.approx(b["total"], rel=1e-6), (a, b)
    result = _main(monkeypatch, capsys, "train", "--resume", tmp_path / "stopped-3", "--epochs", "3")
    assert result.returncode == 2 and "moved past its first stage" in result.stderr


def test_fashion_mnist_trains_where_installed(tmp_path):
    from vaelab.data.datasets import DEBIAN_FASHION_MNIST

    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed ({DEBIAN_FASHION_MNIST}: apt-get install dataset-fashion-mnist)")
    from vaelab.train import Trainer

    config = apply_overrides(
        RunConfig(), [*TINY_VQ, "data.name=fashion-mnist", "train.epochs=1", "model.prior_epochs=1"]
    )
    test = Trainer(config, tmp_path / "run", figures=False).fit(progress=False)
    assert math.isfinite(test["total"]) and test["kl"] < 49 * math.log(16)


@pytest.mark.skipif("vqvae-mnist" not in __import__("vaelab.pretrained").pretrained.available(), reason="not shipped")
def test_the_shipped_vqvae_repeats_its_code_usage_and_bound():
    import vaelab.pretrained
    from vaelab.eval import estimate_log_likelihood
    from vaelab.eval.summary import code_usage_analysis
    from vaelab.model import load_model
    from vaelab.train import make_batches

    folder = vaelab.pretrained.path("vqvae-mnist")
    model, config, _ = load_model(folder)
    recorded = json.loads((folder / "results.json").read_text())
    test = make_batches(config)[1]["test"]
    assert model.learned_prior
    assert code_usage_analysis(model, test) == pytest.approx(recorded["code_usage"])
    bound = estimate_log_likelihood(model, test)
    assert bound["nll"] == pytest.approx(recorded["test"]["nll"], abs=1e-3)
    assert bound["bits_per_dim"] == pytest.approx(recorded["test"]["bits_per_dim"], abs=1e-5)
