"""train.minutes: a budget of training time over which the lr schedule runs, and which ends training."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import vaelab.train.trainer as trainer_module
from tests.conftest import tiny_config
from vaelab.errors import VaelabError
from vaelab.train import Trainer
from vaelab.train.schedule import learning_rate

EPOCH_SECONDS = 10.0


def test_the_budget_ends_training_and_the_schedule_runs_over_it(tmp_path, monkeypatch):
    # a clock on which every epoch lasts EPOCH_SECONDS (the trainer reads it at an epoch's start and end)
    calls = []

    def perf_counter() -> float:
        calls.append(None)
        return EPOCH_SECONDS * (len(calls) // 2)

    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=perf_counter))
    budget = 1.0  # minutes: six epochs of 10 s
    config = tiny_config(
        "train.epochs=50", f"train.minutes={budget}", "train.lr_schedule=burda-even", "train.checkpoint_minutes=0"
    )
    Trainer(config, tmp_path / "run", figures=False).fit(progress=False)

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["seconds"] for r in train] == [EPOCH_SECONDS] * 6  # a seventh would overrun the 60 s
    expected = [learning_rate("burda-even", config.train.lr, EPOCH_SECONDS * i, 60 * budget) for i in range(6)]
    assert [r["lr"] for r in train] == pytest.approx(expected)
    assert expected[0] > expected[-1]  # the schedule's later stages were reached within the budget
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["epochs_trained"] == 6 and meta["finished"] is True


def test_a_bad_budget_is_refused():
    with pytest.raises(VaelabError, match="train.minutes must be >= 0"):
        tiny_config("train.minutes=-1").validate()
