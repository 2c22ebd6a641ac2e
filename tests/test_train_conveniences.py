"""Early stopping on the validation total and keeping the best epoch's weights (off by default), and what
a run shows in TensorBoard: images of every epoch and the run's hyperparameters."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import tiny_config
from vaelab import VaelabError
from vaelab.config import RunConfig, apply_overrides
from vaelab.train import Trainer


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_off_by_default_so_the_recipes_are_unchanged():
    train = RunConfig().train
    assert (train.early_stopping, train.early_stopping_delta, train.keep_best) == (0, 0.0, False)


def test_early_stopping_ends_the_run_and_keeps_the_best_epoch(tmp_path):
    # a delta no epoch can beat: epoch 1 stays the best, so two more epochs without improvement end the run
    run = tmp_path / "stopped"
    config = tiny_config(
        "train.epochs=6", "train.early_stopping=2", "train.early_stopping_delta=1000", "train.keep_best=true"
    )
    test = Trainer(config, run, figures=False).fit(progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert (meta["epochs_trained"], meta["stopped_early"], meta["kept_epoch"]) == (3, True, 1)
    records = _records(run)
    assert [r["epoch"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert records[-1]["split"] == "test" and records[-1]["kept_epoch"] == 1
    assert "kept the weights of epoch 1 of 3" in (run / "report.md").read_text()
    # the kept weights are epoch 1's: the test bound of a one-epoch run of the same seed
    one_epoch = Trainer(tiny_config("train.epochs=1"), tmp_path / "one", figures=False).fit(progress=False)
    assert test["total"] == pytest.approx(one_epoch["total"], abs=1e-4)


def test_keep_best_without_early_stopping_trains_every_epoch(tmp_path):
    run = tmp_path / "best"
    config = tiny_config("train.epochs=3", "train.keep_best=true")
    Trainer(config, run, figures=False).fit(progress=False)
    validation = {r["epoch"]: r["total"] for r in _records(run) if r["split"] == "validation"}
    meta = json.loads((run / "model.json").read_text())
    assert meta["epochs_trained"] == 3 and not meta["stopped_early"]
    assert meta["kept_epoch"] == min(validation, key=validation.get)


@pytest.mark.parametrize(
    "overrides, said",
    [
        (["train.early_stopping=-1"], "train.early_stopping must be >= 0"),
        (["train.early_stopping_delta=-0.5"], "train.early_stopping_delta must be >= 0"),
        (["train.keep_best=true", "data.validation_size=0"], "no validation split"),
        (["train.early_stopping=3", "data.validation_size=0"], "no validation split"),
    ],
)
def test_bad_settings_are_refused_before_any_work(overrides, said):
    with pytest.raises(VaelabError, match=said):
        apply_overrides(RunConfig(), overrides)


def test_tensorboard_gets_images_every_epoch_and_the_hyperparameters(tmp_path):
    run = tmp_path / "tb"
    Trainer(tiny_config("train.epochs=2"), run, figures=False).fit(progress=False)
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"reconstructions", "samples", "manifold"}
    for tag in ("reconstructions", "samples", "manifold"):
        assert [image.step for image in events.Images(tag)] == [1, 2]
    manifold = events.Images("manifold")[0]
    assert (manifold.width, manifold.height) == (15 * 28 + 16 * 2, 15 * 28 + 16 * 2)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(1e-3) and hparams["model.arch"].string_value == "mlp"
    assert hparams["model.hidden"].string_value == "[32]"


def test_from_the_command_line(run_cli, tmp_path):
    from tests.conftest import TINY, set_args

    out = tmp_path / "cli"
    args = ["train", "--out", out, "--no-figures", "--early-stopping", "1", "--keep-best"]
    result = run_cli(*args, *set_args([*TINY, "train.epochs=4", "train.early_stopping_delta=1000"]))
    assert result.returncode == 0, result.stderr
    said = "early stopping after epoch 2: no validation total lower by more than 1000 (train.early_stopping_delta) "
    assert said + "than epoch 1's" in result.stderr and "for 1 epoch (" in result.stderr
    assert "keeping epoch 1's weights" in result.stderr
    meta = json.loads((out / "model.json").read_text())
    assert (meta["epochs_trained"], meta["kept_epoch"]) == (2, 1)
    bad = run_cli("train", "--out", tmp_path / "bad", "--early-stopping", "-1", *set_args(TINY))
    assert bad.returncode == 2 and bad.stderr.startswith("error: train.early_stopping must be >= 0"), bad.stderr
    assert bad.stderr.count("\n") == 1 and not (tmp_path / "bad").exists()
