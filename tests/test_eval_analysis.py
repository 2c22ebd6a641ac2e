"""The analysis part of ``vaelab eval``: probes and the collapse flag on synthetic latents, the Fréchet
distance against closed forms, the shipped MNIST classifier, and the command on a tiny trained run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.data import Batches, ImageDataset
from vaelab.data.datasets import DEBIAN_FASHION_MNIST, folder_has_idx_set
from vaelab.errors import VaelabError
from vaelab.eval import (
    active_units,
    frechet_distance,
    frechet_distance_of_features,
    knn_accuracy,
    logistic_probe_accuracy,
    posterior_collapse,
    silhouette,
)
from vaelab.eval.classifier import FEATURE_DIM, accuracy, classifier_info, features, load_classifier
from vaelab.eval.summary import evaluate_model, frechet_applicable, write_evaluation_section

# --- probes and collapse on synthetic latents ------------------------------------------------------


def _clusters(n: int, d: int = 4, spread: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten well-separated Gaussian clusters in d dimensions, labelled 0..9."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, d, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.randint(0, 10, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, d, generator=g), labels


def test_probes_on_separable_latents():
    train, train_y = _clusters(2000, seed=1)
    test, test_y = _clusters(500, seed=2)
    assert knn_accuracy(train, train_y, test, test_y) > 0.95
    assert logistic_probe_accuracy(train, train_y, test, test_y) > 0.95
    # the fit is limited to the first `limit` training points: 20 points cannot cover ten classes well
    assert logistic_probe_accuracy(train, train_y, test, test_y, limit=5) < 0.6
    assert silhouette(test, test_y) > 0.5
    count, variances = active_units(test)
    assert count == 4 and len(variances) == 4
    assert not posterior_collapse(count, kl_per_dim=[1.0, 2.0, 0.5, 3.0])


def test_collapsed_latents_give_no_active_units_and_the_warning():
    train_y = torch.arange(1000) % 10
    test_y = torch.arange(300) % 10
    train = torch.full((1000, 3), 0.25)
    test = torch.full((300, 3), 0.25)  # every image has the same posterior mean
    count, variances = active_units(test)
    assert count == 0 and variances == [0.0, 0.0, 0.0]
    assert posterior_collapse(count, kl_per_dim=[0.5, 0.5, 0.5])  # no active unit is enough
    # a probe on identical features cannot beat the majority class
    assert logistic_probe_accuracy(train, train_y, test, test_y) <= 0.11
    assert knn_accuracy(train, train_y, test, test_y) <= 0.11


def test_collapse_flag_from_the_kl_terms():
    assert posterior_collapse(2, kl_per_dim=[0.001, 0.009])
    assert not posterior_collapse(2, kl_per_dim=[0.001, 0.02])
    # a KL that does not factorise: the total against threshold * d
    assert posterior_collapse(2, kl=0.015, latent_dim=2)
    assert not posterior_collapse(2, kl=0.5, latent_dim=2)


# --- Fréchet distance ------------------------------------------------------------------------------


def test_frechet_distance_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance_of_features(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 4, 6), rng.uniform(0.1, 4, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def _random_covariance(rng, d: int, rank: int | None = None) -> np.ndarray:
    m = rng.normal(size=(d, rank or d))
    return m @ m.T / d


def test_frechet_distance_is_symmetric_and_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 10
    s1, s2 = _random_covariance(rng, d), _random_covariance(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    forward = frechet_distance(mu1, s1, mu2, s2)
    assert forward == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    root = scipy_linalg.sqrtm(s1 @ s2)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root))
    assert forward == pytest.approx(reference, rel=1e-7)
    # a singular covariance (rank 3 of 10) stays finite and non-negative
    singular = _random_covariance(rng, d, rank=3)
    assert 0 <= frechet_distance(mu1, singular, mu1, singular) < 1e-8
    assert frechet_distance(mu1, singular, mu2, s2) > 0


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(VaelabError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(VaelabError, match="at least 2"):
        frechet_distance_of_features(np.zeros((1, 3)), np.zeros((5, 3)))


# --- the shipped classifier ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_classifier_weights_load_and_classify_mnist(classifier, mnist):
    x, y = mnist.x_test[:1000], mnist.y_test[:1000]
    assert accuracy(classifier, x, y) > 0.98
    assert features(classifier, x[:10]).shape == (10, FEATURE_DIM)
    info = classifier_info()
    assert info["command"].startswith("python -m vaelab.eval.classifier")
    assert info["test_accuracy"] > 0.98
    for key in ("seed", "epochs", "wall_seconds"):
        assert key in info, key


def test_frechet_distance_in_classifier_features_orders_sets_sensibly(classifier, mnist):
    """Test digits are close to training digits, far from noise."""
    test, train = mnist.x_test[:500], mnist.x_train[:500]
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    f_test, f_train, f_noise = (features(classifier, x) for x in (test, train, noise))
    near, far = frechet_distance_of_features(f_test, f_train), frechet_distance_of_features(f_test, f_noise)
    assert 0 < near < far / 5


def test_frechet_only_for_data_sets_with_a_classifier():
    x = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    assert frechet_applicable(ImageDataset("mnist", x, y, x, y, "test")) is None
    assert frechet_applicable(ImageDataset("fashion-mnist", x, y, x, y, "test")) is None
    reason = frechet_applicable(ImageDataset("kmnist", x, y, x, y, "test"))
    assert reason and "not computed" in reason and "kmnist" in reason
    with pytest.raises(VaelabError, match="no classifier for the data set 'kmnist'"):
        load_classifier("kmnist")


@pytest.mark.skipif(
    not folder_has_idx_set(DEBIAN_FASHION_MNIST), reason="Debian's dataset-fashion-mnist absent (apt-get install it)"
)
def test_the_fashion_classifier_tells_clothes_apart_and_not_digits():
    """Its own test images it gets mostly right; its features set clothes apart from digits, which
    the MNIST classifier's features would not be asked to do."""
    from vaelab.data import load_dataset

    fashion, digits = load_dataset("fashion-mnist"), load_dataset("mnist")
    classifier = load_classifier("fashion-mnist")
    info = classifier_info("fashion-mnist")
    assert info["command"].startswith("python -m vaelab.eval.classifier --data fashion-mnist")
    assert accuracy(classifier, fashion.x_test[:1000], fashion.y_test[:1000]) > 0.85 and info["test_accuracy"] > 0.85
    assert accuracy(load_classifier("mnist"), fashion.x_test[:1000], fashion.y_test[:1000]) < 0.5
    f_test, f_train, f_digits = (
        features(classifier, x[:500]) for x in (fashion.x_test, fashion.x_train, digits.x_test)
    )
    assert 0 < frechet_distance_of_features(f_test, f_train) < frechet_distance_of_features(f_test, f_digits) / 5


def test_evaluate_model_on_other_data_reports_a_null_frechet_distance():
    from vaelab.config import ModelConfig
    from vaelab.model import build_vae

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.arange(60) % 3
    dataset = ImageDataset("other", x, y, x[:30], y[:30], "test")
    torch.manual_seed(0)
    model = build_vae(ModelConfig(arch="mlp", hidden=[8]), (1, 28, 28)).eval()
    result = evaluate_model(model, dataset, Batches(x, y, 32), Batches(x[:30], y[:30], 32, training=False))
    assert result["frechet_distance"] is None and "not computed" in result["frechet_note"]
    assert result["knn_train_images"] == 60 and result["probe_train_images"] == 60
    assert isinstance(result["posterior_collapse"], bool)
    json.dumps(result)  # all of it is JSON


def test_evaluation_section_replaces_an_earlier_one(tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# run\n\n## Test set\n\nnumbers\n\n## Figures\n\n![a](figures/a.png)\n")
    result = {
        "dataset": "mnist", "images": 10, "seed": 1, "total": 100.0, "reconstruction": 90.0, "kl": 10.0,
        "kl_per_dim": [5.0, 5.0], "active_units": 2, "latent_dim": 2, "latent_variance": [1.0, 1.0],
        "posterior_collapse": False, "posterior_collapse_reason": None, "knn5_accuracy": 0.9,
        "knn_train_images": 100, "logistic_accuracy": 0.8, "probe_train_images": 100, "silhouette": 0.3,
        "frechet_distance": 1.5, "frechet_samples": 10, "frechet_reference_images": 10, "frechet_note": "NOT FID",
    }  # fmt: skip
    write_evaluation_section(report, result)
    write_evaluation_section(report, {**result, "total": 99.0})
    text = report.read_text()
    assert text.count("## Evaluation") == 1 and "| 99.00 |" in text and "| 100.00 |" not in text
    assert text.startswith("# run\n\n## Test set") and "## Figures" in text


# --- the command on a tiny trained run -------------------------------------------------------------

ANALYSIS_KEYS = {
    "total", "reconstruction", "kl", "kl_per_dim", "active_units", "latent_variance", "posterior_collapse",
    "posterior_collapse_reason", "knn5_accuracy", "logistic_accuracy", "probe_train_images", "silhouette",
    "frechet_distance", "frechet_samples", "frechet_reference_images", "frechet_note", "analysis_seconds",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cli_env) -> Path:
    out = tmp_path_factory.mktemp("eval-analysis") / "tiny"
    args = ["train", "--epochs", "1", "--no-figures", "--out", str(out), "--threads", "1"]
    args += ["--set", "data.train_limit=512", "--set", "data.validation_size=256", "--set", "data.test_limit=256"]
    args += ["--arch", "mlp", "--set", "model.hidden=[32]"]
    done = subprocess.run([sys.executable, "-m", "vaelab", *args], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eval_json_writes_metrics_and_report(tiny_run, run_cli):
    before = _lines(tiny_run / "metrics.jsonl")
    done = run_cli("eval", tiny_run, "--json", "--threads", "1")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.strip().splitlines()  # exactly one JSON object
    result = json.loads(line)
    assert set(result) >= ANALYSIS_KEYS
    assert result["images"] == 256 and result["dataset"] == "mnist"
    assert result["frechet_samples"] == 10_000 and result["frechet_reference_images"] == 256
    assert result["frechet_distance"] > 0 and "NOT comparable" in result["frechet_note"]
    assert result["probe_train_images"] == 512 and result["knn_train_images"] == 512
    # one epoch of 4 steps leaves this model collapsed: the flag and its reason agree with the active units
    assert result["posterior_collapse"] is (result["active_units"] == 0 or max(result["kl_per_dim"]) < 0.01)
    assert (result["posterior_collapse_reason"] is None) is not result["posterior_collapse"]

    records = _lines(tiny_run / "metrics.jsonl")
    assert records[:-1] == before
    record = records[-1]
    assert record["kind"] == "analysis" and record["split"] == "test" and record["epoch"] == 1
    assert set(record) >= ANALYSIS_KEYS
    assert record["frechet_distance"] == result["frechet_distance"]
    # the evaluation's ELBO is the trainer's test ELBO (same split, same noise seed)
    assert record["total"] == pytest.approx(before[-1]["total"], rel=1e-6)

    report = (tiny_run / "report.md").read_text()
    assert "## Evaluation" in report and "NOT comparable with Inception-based FID" in report
    assert f"{result['frechet_distance']:.3f}" in report and "logistic-regression probe" in report


def test_readers_of_metrics_take_the_analysis_record_in_their_stride(tiny_run, tmp_path):
    """Loss curves, the run report and a resumed run's truncation all cope with the extra record."""
    from vaelab.config import RunConfig
    from vaelab.train import Trainer, read_records, write_run_report
    from vaelab.viz.figures import loss_curves

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    records = read_records(run)
    if records[-1].get("kind") != "analysis":
        pytest.skip("needs the record written by test_eval_json_writes_metrics_and_report")
    loss_curves(records)
    write_run_report(run, RunConfig.load(run / "config.toml"), records, [])
    assert f"{records[-1]['total']:.2f}" in (run / "report.md").read_text()
    Trainer.resume(run, figures=False)  # drops the trainer's test record, keeps the analysis of the model it named
    assert [(r["split"], r.get("kind")) for r in read_records(run)] == [
        ("train", None),
        ("validation", None),
        ("test", "analysis"),
    ]


def test_eval_table_warns_of_posterior_collapse(tiny_run, tmp_path, monkeypatch, capsys):
    """A model whose encoder ignores its input: the table says so, and --no-write leaves the run alone."""
    from vaelab.cli import main
    from vaelab.model import load_model, save_model

    run = tmp_path / "collapsed"
    shutil.copytree(tiny_run, run)
    model, config, meta = load_model(run)
    last = model.encoder.net[-1][-1]  # the encoder's output layer
    torch.nn.init.zeros_(last.weight)
    save_model(model, run, config, {k: v for k, v in meta.items() if k not in ("format", "format_version")})
    metrics, report = (run / "metrics.jsonl").read_text(), (run / "report.md").read_text()
    monkeypatch.setattr(sys, "argv", ["vaelab", "eval", str(run), "--no-write", "--fd-samples", "500"])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "WARNING: posterior collapse" in out and "no active unit" in out
    assert "active units: 0 of 2" in out and "NOT comparable" in out
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "report.md").read_text() == report


def test_eval_of_a_single_image_gives_valid_json_and_writes_nothing(tiny_run, monkeypatch, capsys):
    from vaelab.cli import main

    metrics = (tiny_run / "metrics.jsonl").read_text()
    monkeypatch.setattr(sys, "argv", ["vaelab", "eval", str(tiny_run), "--json", "--limit", "1"])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    result = json.loads(captured.out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert result["images"] == 1 and result["active_units"] is None and result["silhouette"] is None
    assert result["frechet_distance"] is None and "at least 2" in result["frechet_note"]
    assert "nothing was written" in captured.err
    assert (tiny_run / "metrics.jsonl").read_text() == metrics
