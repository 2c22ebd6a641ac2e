"""train.snapshot_minutes: the weights every N minutes of training time.

The training clock is faked as in test_time_budget: the trainer's ``time`` module is replaced by one whose
``perf_counter`` only training steps move, STEP_SECONDS each.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

import vaelab.train.trainer as trainer_module
from tests.conftest import tiny_config
from vaelab.errors import VaelabError
from vaelab.runs import RunDir
from vaelab.runs.snapshots import list_snapshots, mark_name, read_snapshot
from vaelab.train import Trainer

STEP_SECONDS = 7.5
# 512 training images at batch 64: 8 steps (60 s) an epoch; a snapshot every 4 steps, a mid-epoch checkpoint every 3
SNAPSHOTS = ["train.snapshot_minutes=0.5", "train.checkpoint_minutes=0.375", "train.ema_decay=0.9"]


class Killed(Exception):
    """Stands in for a kill: raised by a training step."""


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def _timed(trainer: Trainer, clock: list[float], kill_at: int | None = None) -> list[int]:
    """Each training step moves the clock STEP_SECONDS; the step numbered ``kill_at`` (from 1) raises Killed."""
    step, calls = trainer.step, []

    def timed_step(*args, **kwargs):
        calls.append(len(calls) + 1)
        if calls[-1] == kill_at:
            raise Killed
        clock[0] += STEP_SECONDS
        return step(*args, **kwargs)

    trainer.step = timed_step
    return calls


def _snapshots(run_dir: Path) -> list[tuple[str, float, int, int, str]]:
    return [(s.name, s.training_seconds, s.epoch, s.step, s.weights) for s in list_snapshots(RunDir(run_dir))]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


EXPECTED = [  # every 30 s of the clock: steps 4 and 8 of each epoch
    ("minutes-000.5", 30.0, 1, 4, "ema"),
    ("minutes-001.0", 60.0, 1, 8, "ema"),
    ("minutes-001.5", 90.0, 2, 4, "ema"),
    ("minutes-002.0", 120.0, 2, 8, "ema"),
]


def test_snapshots_are_taken_at_the_marks_of_the_training_clock_with_the_weights_the_run_saves(tmp_path, clock):
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(*SNAPSHOTS), run_dir, figures=False)
    assert len(trainer.train_batches) == 8
    calls = _timed(trainer, clock)
    trainer.fit(progress=False)

    assert len(calls) == 16 and _snapshots(run_dir) == EXPECTED
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # saving them took none of the training clock: each epoch is its 8 steps
    assert [r["seconds"] for r in records if r["split"] == "train"] == [8 * STEP_SECONDS] * 2
    # the last mark fell on the last step: that snapshot is the saved model, the weights' moving average
    final = _weights(run_dir / "model.safetensors")
    assert _same(_weights(run_dir / "snapshots" / "minutes-002.0.safetensors"), final)
    assert not _same(_weights(run_dir / "snapshots" / "minutes-001.5.safetensors"), final)
    checkpoint = _weights(run_dir / "checkpoint" / "last.safetensors")
    raw = {k.removeprefix("model."): v for k, v in checkpoint.items() if k.startswith("model.")}
    assert not _same(raw, final)  # (so the snapshot is the average's, not the raw weights)


def test_a_budget_with_snapshots_trains_the_same_steps_and_ends_on_its_mark(tmp_path, clock):
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config("train.epochs=50", "train.minutes=1.25", *SNAPSHOTS), run_dir, figures=False)
    calls = _timed(trainer, clock)
    trainer.fit(progress=False)
    assert len(calls) == 10  # 75 s of 7.5 s steps, as without snapshots
    assert [s[0] for s in _snapshots(run_dir)] == ["minutes-000.5", "minutes-001.0"]


def test_a_resume_neither_duplicates_nor_loses_snapshots(tmp_path, clock):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    trainer = Trainer(tiny_config(*SNAPSHOTS), whole, figures=False)
    _timed(trainer, clock)
    trainer.fit(progress=False)

    # killed in epoch 2 at its 6th step: the last checkpoint is after its 3rd (clock 82.5 s), and the snapshot
    # of its 4th step (90 s) was taken after that checkpoint
    clock[0] = 0.0
    trainer = Trainer(tiny_config(*SNAPSHOTS), killed, figures=False)
    _timed(trainer, clock, kill_at=14)
    with pytest.raises(Killed):
        trainer.fit(progress=False)
    assert [s[0] for s in _snapshots(killed)] == ["minutes-000.5", "minutes-001.0", "minutes-001.5"]
    stale = killed / "snapshots" / "minutes-001.5.safetensors"
    with safetensors.safe_open(str(stale), framework="pt") as handle:
        metadata = handle.metadata()
    zeros = {k: torch.zeros_like(v) for k, v in _weights(stale).items()}
    safetensors.torch.save_file(zeros, str(stale), metadata=metadata)  # marked, to see it replaced

    clock[0] = 1000.0  # another session: only the clock's differences count
    resumed = Trainer.resume(killed, figures=False)
    assert resumed.position == "after epoch 1, step 3 of epoch 2"
    calls = _timed(resumed, clock)
    resumed.fit(progress=False)

    assert len(calls) == 5  # steps 4..8 of epoch 2
    assert _snapshots(killed) == _snapshots(whole) == EXPECTED
    for name, *_ in EXPECTED:  # the one taken after the checkpoint was removed, and taken again
        assert _same(
            _weights(killed / "snapshots" / f"{name}.safetensors"),
            _weights(whole / "snapshots" / f"{name}.safetensors"),
        )
    # the clock went on from the checkpoint: the resumed epoch counts its 3 steps before it
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["seconds"] for r in records if r["split"] == "train"] == [8 * STEP_SECONDS] * 2


def test_a_fresh_start_removes_the_snapshots_of_a_run_killed_before_its_first_checkpoint(tmp_path, clock):
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # made before, as a kill leaves it (a run failing in-process removes a folder it made)
    config = tiny_config("train.snapshot_minutes=0.25", "train.checkpoint_minutes=0")  # every 15 s: 2 steps
    trainer = Trainer(config, run_dir, figures=False)
    _timed(trainer, clock, kill_at=4)
    with pytest.raises(Killed):
        trainer.fit(progress=False)
    assert [s[0] for s in _snapshots(run_dir)] == ["minutes-000.25"]  # no checkpoint yet: nothing to resume
    (run_dir / "snapshots" / "minutes-000.25.safetensors").rename(run_dir / "snapshots" / "minutes-009.safetensors")
    trainer = Trainer(config, run_dir, figures=False)
    _timed(trainer, clock)
    trainer.fit(progress=False)
    names = [s[0] for s in _snapshots(run_dir)]
    assert names == [mark_name(i, 0.25)[0] for i in range(1, 9)] and "minutes-009" not in names


def test_mark_names_are_exact_decimals():
    assert mark_name(2, 5.0) == ("minutes-010", "10")
    assert mark_name(3, 2.5) == ("minutes-007.5", "7.5")
    assert mark_name(3, 0.1) == ("minutes-000.3", "0.3")  # not 0.30000000000000004
    assert mark_name(400, 0.25) == ("minutes-100.00", "100.00")
    assert mark_name(1, 1e-9)[0] == "minutes-000.000000001"


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-0.5"])
def test_a_bad_interval_is_refused_in_one_line(value, run_cli, tmp_path):
    with pytest.raises(VaelabError, match="train.snapshot_minutes must be|must be a finite number"):
        tiny_config(f"train.snapshot_minutes={value}").validate()
    if value == "-1":
        result = run_cli("train", "--out", tmp_path / "r", "--set", f"train.snapshot_minutes={value}")
        assert result.returncode == 2 and not (tmp_path / "r").exists()
        assert result.stderr.strip().count("\n") == 0 and "train.snapshot_minutes must be >= 0" in result.stderr


def test_a_damaged_snapshot_is_named_in_one_line(tmp_path):
    path = tmp_path / "minutes-001.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "vaelab-snapshot"})
    with pytest.raises(VaelabError, match=r"minutes-001.safetensors: training_seconds must be a finite number"):
        read_snapshot(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(VaelabError, match="is not a readable safetensors file"):
        read_snapshot(path)
