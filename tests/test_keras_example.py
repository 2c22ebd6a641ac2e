"""`vaelab reproduce keras-example`: Keras' VAE example set up exactly, its losses logged as Keras computes
them (train.keras_log), and the published log set beside ours."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config
from vaelab.experiments import get_experiment
from vaelab.experiments.reproduce import training_log_beside, training_log_section
from vaelab.model.base import Terms
from vaelab.train import Trainer, make_batches


def test_the_experiment_is_the_examples_setup():
    experiment = get_experiment("keras-example")
    config, notice = experiment.config()
    assert notice is None
    m, t, d = config.model, config.train, config.data
    assert (m.family, m.arch, m.latent_dim, m.prior, m.likelihood, m.posterior) == (
        "vae", "conv", 2, "standard", "bernoulli", "diagonal"
    )  # fmt: skip
    assert (t.epochs, t.batch_size, t.lr, t.adam_eps, t.lr_schedule, t.keras_log) == (
        30,
        128,
        1e-3,
        1e-7,
        "constant",
        True,
    )
    assert (d.name, d.binarize, d.validation_size, d.train_with_test) == ("mnist", "none", 0, True)
    log = experiment.reference_log
    assert [row["epoch"] for row in log] == list(range(1, 31))
    assert (log[-1]["loss"], log[-1]["reconstruction_loss"], log[-1]["kl_loss"]) == (146.9508, 140.1473, 6.7960)


def test_it_trains_on_all_70000_images_training_then_test():
    config = get_experiment("keras-example").config()[0]
    dataset, batches = make_batches(config)
    train = batches["train"]
    assert len(train.images) == 70_000 and batches["validation"] is None
    assert torch.equal(train.images[:60_000], dataset.x_train) and torch.equal(train.images[60_000:], dataset.x_test)


def test_keras_log_is_the_mean_of_batch_means_and_the_progress_bars_mean_of_running_means(tmp_path):
    # 200 images at batch 64: batches of 64, 64, 64 and 8; each example of batch s gets loss s + 1
    trainer = Trainer(tiny_config("data.train_limit=200", "train.epochs=1", "train.keras_log=true"), tmp_path / "k")
    step_of = iter(range(10))

    def fake_step(x, **_):
        s = next(step_of)
        total = torch.full((len(x),), float(s + 1))
        return Terms(loss=total.mean(), total=total, reconstruction=0.75 * total, kl=0.25 * total)

    trainer.step = fake_step
    metrics = trainer.train_epoch()
    batch_means = [1.0, 2.0, 3.0, 4.0]
    running = [sum(batch_means[: i + 1]) / (i + 1) for i in range(4)]
    assert metrics["keras_total"] == pytest.approx(sum(batch_means) / 4)
    assert metrics["keras_reconstruction_loss"] == pytest.approx(0.75 * 2.5)
    assert metrics["keras_kl_loss"] == pytest.approx(0.25 * 2.5)
    # Keras 2.15's printed loss, checked against its progress bar: the epoch-end update counts the last twice
    assert metrics["keras_progbar_loss"] == pytest.approx((sum(running) + running[-1]) / 5)
    assert metrics["total"] == pytest.approx((64 * (1 + 2 + 3) + 8 * 4) / 200)  # vaelab's own: per image


def test_the_report_sets_the_logs_side_by_side():
    reference = get_experiment("keras-example").reference_log
    records = [
        {
            "epoch": 1,
            "split": "train",
            "keras_progbar_loss": 250.0,
            "keras_reconstruction_loss": 200.0,
            "keras_kl_loss": 4.0,
        },
        {"epoch": 1, "split": "test", "total": 180.0},
    ]
    rows = training_log_beside(reference, records)
    assert rows[0] == {
        "epoch": 1,
        "published": {"loss": 253.6647, "reconstruction_loss": 205.1592, "kl_loss": 3.9604},
        "ours": {"loss": 250.0, "reconstruction_loss": 200.0, "kl_loss": 4.0},
    }
    assert "ours" not in rows[1] and len(rows) == 30
    section = training_log_section({"training_log": rows})
    assert "| 1 | 253.66 | 250.00 | 205.16 | 200.00 | 3.96 | 4.00 |" in section
    assert "| 30 | 146.95 | – | 140.15 | – | 6.80 | – |" in section
