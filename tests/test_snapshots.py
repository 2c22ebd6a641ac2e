"""train.snapshot_minutes and `vaelab eval --snapshots`: weights every N minutes of training time, and the test NLL
of each against the training minutes.

The training clock is faked as in test_time_budget: the trainer's ``time`` module is replaced by one whose
``perf_counter`` only training steps move, STEP_SECONDS each.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

import vaelab.train.trainer as trainer_module
from tests.conftest import in_process_cli as _main
from tests.conftest import tiny_config
from vaelab.errors import VaelabError
from vaelab.eval.curve import final_weights
from vaelab.eval.disentanglement import METRICS
from vaelab.model.store import read_model_json
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
    # the budget ended epoch 2 after 2 of its 8 steps: the final model stands at 1.25 epochs, 1 completed
    records = RunDir(run_dir).records()
    assert [r.get("fraction_trained") for r in records if r["split"] == "train"] == [None, 0.25]
    final = final_weights(run_dir / "model.safetensors", read_model_json(run_dir), records)
    assert (final.epochs, final.epochs_completed) == (1.25, 1)


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


def test_a_model_trained_in_stages_is_refused(tmp_path):
    from vaelab.config import RunConfig, apply_overrides

    config = apply_overrides(
        RunConfig(),
        ["model.family=vqvae", "model.prior_width=16", "model.prior_layers=1", "data.train_limit=64"]
        + ["data.validation_size=0", "data.test_limit=16", "train.snapshot_minutes=1"],
    )
    with pytest.raises(VaelabError, match="train.snapshot_minutes is not supported for a model trained in stages"):
        Trainer(config, tmp_path / "run", figures=False)
    assert not (tmp_path / "run").exists()


def test_a_damaged_snapshot_is_named_in_one_line(tmp_path):
    path = tmp_path / "minutes-001.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "vaelab-snapshot"})
    with pytest.raises(VaelabError, match=r"minutes-001.safetensors: training_seconds must be a finite number"):
        read_snapshot(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(VaelabError, match="is not a readable safetensors file"):
        read_snapshot(path)


# --- vaelab eval --snapshots ---------------------------------------------------------------------------


@pytest.fixture
def snapshot_run(tmp_path, clock) -> Path:
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config("train.snapshot_minutes=0.5", "train.ema_decay=0.9"), run_dir, figures=False)
    _timed(trainer, clock)
    trainer.fit(progress=False)
    return run_dir


K, LIMIT = 20, 24


def test_the_curve_is_eval_nll_of_each_snapshot_loaded_as_a_model(snapshot_run, tmp_path, monkeypatch, capsys):
    result = _main(monkeypatch, capsys, "eval", snapshot_run, "--snapshots", "--k", K, "--limit", LIMIT, "--json")
    assert result.returncode == 0, result.stderr
    curve = json.loads(result.stdout)
    names = [p["snapshot"] for p in curve["points"]]
    assert names == [name for name, *_ in EXPECTED] + ["final"]
    assert [p["training_minutes"] for p in curve["points"]] == [0.5, 1.0, 1.5, 2.0, 2.0]
    assert "[1/5] minutes-000.5: 0.50 training minutes" in result.stderr  # progress lines as it works

    for point in curve["points"]:
        copy = tmp_path / f"as-model-{point['snapshot']}"
        shutil.copytree(snapshot_run, copy)
        if point["snapshot"] != "final":  # the snapshot's weights as the run's model
            weights = _weights(snapshot_run / "snapshots" / f"{point['snapshot']}.safetensors")
            safetensors.torch.save_file(weights, str(copy / "model.safetensors"))
        args = ["eval", copy, "--nll", "--k", K, "--limit", LIMIT, "--json", "--no-write", "--fd-samples", 2]
        single = _main(monkeypatch, capsys, *args)
        assert single.returncode == 0, single.stderr
        one = json.loads(single.stdout)
        assert (one["nll"], one["nll_stderr"], one["k"]) == (point["nll"], point["nll_stderr"], point["k"])
    assert curve["points"][0]["nll"] > curve["points"][-1]["nll"]  # (training helped: the points differ)


def test_the_curve_is_written_as_records_figure_and_report_and_reused(snapshot_run, monkeypatch, capsys):
    args = ["eval", snapshot_run, "--snapshots", "--k", K, "--limit", LIMIT]
    first = _main(monkeypatch, capsys, *args)
    assert first.returncode == 0, first.stderr
    figure = snapshot_run / "figures" / "nll_vs_minutes.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (snapshot_run / "metrics.jsonl").read_text().splitlines()]
    points = [r for r in records if r.get("kind") == "nll_curve"]
    assert [(r["snapshot"], r["epoch"], r["split"]) for r in points] == [
        ("minutes-000.5", 0, "curve"),
        ("minutes-001.0", 1, "curve"),
        ("minutes-001.5", 1, "curve"),
        ("minutes-002.0", 2, "curve"),
        ("final", 2, "curve"),
    ]
    assert all(r["k"] == K and r["images"] == LIMIT for r in points)
    # the final model is the last snapshot's weights: evaluated once
    assert points[-1]["nll"] == points[-2]["nll"] and "nll_seconds" not in points[-1]
    report = (snapshot_run / "report.md").read_text()
    assert "## Test NLL against training time" in report and "![nll_vs_minutes](figures/nll_vs_minutes.png)" in report
    assert "| minutes-001.5 | 1.50 | 1.50 |" in report

    again = _main(monkeypatch, capsys, *args)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("(evaluated before, the same weights)") == 5
    assert (snapshot_run / "metrics.jsonl").read_text().count('"nll_curve"') == 5  # nothing appended twice
    assert (snapshot_run / "report.md").read_text().count("## Test NLL against training time") == 1


def test_eval_snapshots_refuses_what_it_cannot_do_in_one_line(trained_run, tmp_path, monkeypatch, capsys):
    for args, message in (
        (["eval", "--pretrained", "seed-2d", "--snapshots"], "--snapshots reads a run directory's snapshots/"),
        (["eval", trained_run, "--snapshots", "--disentanglement", "--k", "5"], "--k and --limit go with NLL"),
        (["eval", trained_run, "--snapshots", "--metric-points", "40"], "--metric-points goes with --disentanglement"),
        (["eval", trained_run, "--snapshots", "--disentanglement"], "has no ground-truth factors"),
        (["eval", trained_run, "--k", "5"], "--k is the NLL's importance samples"),
        (["eval", trained_run, "--disentanglement", "--k", "5"], "give --nll (with --k) or --limit in another call"),
        (["eval", tmp_path, "--snapshots"], "is not a vaelab run directory"),
    ):
        result = _main(monkeypatch, capsys, *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr
    # a run still training, before its model is saved, and without snapshots: nothing to evaluate
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(trained_run / "config.toml", bare / "config.toml")
    result = _main(monkeypatch, capsys, "eval", bare, "--snapshots", "--no-write")
    assert result.returncode == 2 and "no snapshots (train.snapshot_minutes) and no final model" in result.stderr


def test_reproduce_draws_the_curve_for_an_experiment_that_declares_it(tmp_path, clock, monkeypatch, capsys):
    from vaelab.experiments import EXPERIMENTS, Experiment
    from vaelab.experiments.reproduce import reproduce
    from vaelab.train.step import TrainStep

    class TimedStep(TrainStep):
        def __call__(self, *args, **kwargs):
            clock[0] += STEP_SECONDS
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "TrainStep", TimedStep)
    make = lambda: tiny_config("train.snapshot_minutes=0.5")  # noqa: E731
    monkeypatch.setitem(
        EXPERIMENTS, "curve-tiny", Experiment("curve-tiny", 1, "a tiny run", make, {"nll": 500.0}, nll_curve=(K, LIMIT))
    )
    [result] = reproduce("curve-tiny", tmp_path)
    run_dir = tmp_path / "curve-tiny"
    curve = result["nll_curve"]
    assert (curve["k"], curve["images"]) == (K, LIMIT)
    assert [p["snapshot"] for p in curve["points"]] == [name for name, *_ in EXPECTED] + ["final"]
    assert "figures/nll_vs_minutes.png" in result["figures"] and (run_dir / "figures" / "nll_vs_minutes.png").exists()
    assert json.loads((run_dir / "results.json").read_text())["nll_curve"] == json.loads(json.dumps(curve))
    assert "paper: 500.00" in (run_dir / "report.md").read_text()

    # eval --snapshots finds the run's experiment, and its paper's line, from results.json; nothing is evaluated again
    capsys.readouterr()
    again = _main(monkeypatch, capsys, "eval", run_dir, "--snapshots", "--k", K, "--limit", LIMIT)
    assert again.returncode == 0, again.stderr
    assert "paper: 500.00" in again.stdout and again.stderr.count("(evaluated before, the same weights)") == 5

    # an experiment with a target (best-mnist's kind) draws the target, not a paper's number
    monkeypatch.setitem(EXPERIMENTS, "curve-tiny", replace(EXPERIMENTS["curve-tiny"], published={}, target_nll=450.0))
    third = _main(monkeypatch, capsys, "eval", run_dir, "--snapshots", "--k", K, "--limit", LIMIT)
    assert third.returncode == 0, third.stderr
    assert "target: 450.00" in third.stdout and "paper" not in third.stdout


# --- vaelab eval --snapshots --disentanglement ----------------------------------------------------------------------

POINTS = "40"  # --metric-points: seconds, not minutes


@pytest.fixture
def factor_run(tmp_path, clock) -> Path:
    """A tiny run on dsprites-small with a snapshot at 1 and 2 minutes of the fake clock (the final model: the
    second's weights)."""
    run_dir = tmp_path / "factors"
    data = ["data.name=dsprites-small", "model.latent_dim=4", "train.snapshot_minutes=1.0"]
    trainer = Trainer(tiny_config(*data), run_dir, figures=False)
    _timed(trainer, clock)
    trainer.fit(progress=False)
    return run_dir


def test_the_disentanglement_curve_is_eval_disentanglement_of_each_snapshot(factor_run, tmp_path, monkeypatch, capsys):
    args = ["eval", factor_run, "--snapshots", "--disentanglement", "--metric-points", POINTS]
    result = _main(monkeypatch, capsys, *args, "--json", "--no-write")
    assert result.returncode == 0, result.stderr
    curve = json.loads(result.stdout)
    assert [(p["snapshot"], p["training_minutes"]) for p in curve["points"]] == [
        ("minutes-001", 1.0),
        ("minutes-002", 2.0),
        ("final", 2.0),
    ]
    assert curve["dataset"] == "dsprites-small" and curve["metric_sizes"]["points_train"] == int(POINTS)
    first = curve["points"][0]
    copy = tmp_path / "first-as-model"
    shutil.copytree(factor_run, copy)
    safetensors.torch.save_file(
        _weights(factor_run / "snapshots" / "minutes-001.safetensors"), str(copy / "model.safetensors")
    )
    single = _main(
        monkeypatch, capsys, "eval", copy, "--disentanglement", "--metric-points", POINTS, "--json", "--no-write"
    )
    assert single.returncode == 0, single.stderr
    one = json.loads(single.stdout)
    assert all(one[key] == first[key] for key in METRICS) and one["mig_per_factor"] == first["mig_per_factor"]
    assert curve["points"][-1]["mig"] == curve["points"][-2]["mig"]  # the final model is the last snapshot's weights
    assert "disentanglement_seconds" not in curve["points"][-1]  # ... evaluated once
    assert "metric_seconds" in first and "metric_seconds" not in curve["points"][-1]
    assert not (factor_run / "figures" / "disentanglement_vs_minutes.png").exists()  # --no-write

    written = _main(monkeypatch, capsys, *args)
    assert written.returncode == 0, written.stderr
    assert written.stderr.count("(evaluated before, the same weights)") == 1  # --no-write left no records
    figure = factor_run / "figures" / "disentanglement_vs_minutes.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (factor_run / "metrics.jsonl").read_text().splitlines()]
    points = [r for r in records if r.get("kind") == "disentanglement_curve"]
    assert [(r["snapshot"], r["split"], r["mig"]) for r in points] == [
        (p["snapshot"], "curve", p["mig"]) for p in curve["points"]
    ]
    report = (factor_run / "report.md").read_text()
    assert "## Disentanglement against training time" in report and "| minutes-001 | 1.00 | " in report
    again = _main(monkeypatch, capsys, *args)
    assert again.stderr.count("(evaluated before, the same weights)") == 3
    assert (factor_run / "metrics.jsonl").read_text().count('"disentanglement_curve"') == 3  # nothing twice
    assert (factor_run / "report.md").read_text().count("## Disentanglement against training time") == 1


def test_best_mnist_is_burda_vae_2ls_recipe_for_two_hours_with_snapshots_and_its_curve():
    from vaelab.experiments import EXPERIMENTS
    from vaelab.experiments.reproduce import _comparable

    best, vae = EXPERIMENTS["best-mnist"], EXPERIMENTS["burda-vae-2l"]
    config, recipe = _comparable(best.make_config()), _comparable(vae.make_config())
    assert (config["train"].pop("minutes"), config["train"].pop("snapshot_minutes")) == (118.0, 15.0)
    recipe["train"].pop("minutes"), recipe["train"].pop("snapshot_minutes")
    assert config == recipe
    assert best.nll_k == 5000 and best.nll_curve == (1000, 2000) and best.nll_reference() == ("target", 82.0)


@pytest.mark.parametrize(
    ("name", "version", "gradient", "snapshot_minutes"),
    [("burda-vae-2l", 1, "reparam", 0.0), ("burda-iwae-2l", 3, "dreg", 15.0)],
)
def test_the_two_layer_burda_experiments_ship_the_run_of_their_recipe(name, version, gradient, snapshot_minutes):
    from vaelab import pretrained
    from vaelab.config import RunConfig
    from vaelab.experiments import EXPERIMENTS
    from vaelab.experiments.reproduce import _comparable

    experiment = EXPERIMENTS[name]
    config, _ = experiment.config()
    assert experiment.version == version and experiment.nll_curve is None
    assert config.objective.gradient == gradient and config.train.snapshot_minutes == snapshot_minutes
    recipe = experiment.make_config()
    recipe.train.precision = experiment.precision
    shipped = json.loads((pretrained.path(name) / "model.json").read_text())["config"]
    assert _comparable(recipe) == _comparable(RunConfig.from_dict(shipped))  # the config its shipped run trained
    results = json.loads((pretrained.path(name) / "results.json").read_text())
    assert results["version"] == version and not results["modified"]
