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

STEP_SECONDS = 5.0


def test_the_budget_ends_training_inside_an_epoch_and_the_schedule_runs_over_it(tmp_path, monkeypatch):
    # a clock that only training steps move, STEP_SECONDS each
    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    budget = 1.0  # minutes: 12 steps
    config = tiny_config(
        "train.epochs=50", f"train.minutes={budget}", "train.lr_schedule=burda-even", "train.checkpoint_minutes=0"
    )
    trainer = Trainer(config, tmp_path / "run", figures=False)
    steps_per_epoch = len(trainer.train_batches)
    assert 12 % steps_per_epoch, "the budget should end inside an epoch"
    step, lrs = trainer.step, []

    def timed_step(*args, **kwargs):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        clock[0] += STEP_SECONDS
        return step(*args, **kwargs)

    trainer.step = timed_step
    trainer.fit(progress=False)

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(lrs) == 12  # the budget's steps, and not one more
    full, last = divmod(12, steps_per_epoch)
    assert [r["seconds"] for r in train] == [STEP_SECONDS * steps_per_epoch] * full + [STEP_SECONDS * last]
    # each step's rate is the schedule's at the time it starts
    expected = [learning_rate("burda-even", config.train.lr, STEP_SECONDS * i, 60 * budget) for i in range(12)]
    assert lrs == pytest.approx(expected)
    assert expected[0] > expected[-1]  # the schedule's later stages were reached within the budget
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["epochs_trained"] == full + 1 and meta["finished"] is True


def test_a_bad_budget_is_refused():
    with pytest.raises(VaelabError, match="train.minutes must be >= 0"):
        tiny_config("train.minutes=-1").validate()
