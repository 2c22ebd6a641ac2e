"""Progress without a terminal: lines inside a long epoch, before the test evaluation and the figures,
at each stage of `vaelab eval`; and the end of `vaelab train` names the figures, the report and the
TensorBoard command."""

from __future__ import annotations

import io

from rich.console import Console

from tests.conftest import TINY, set_args, tiny_config
from vaelab.train import Trainer


def test_a_run_without_a_terminal_reports_inside_epochs_and_after_training(tmp_path, monkeypatch):
    from vaelab.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PLAIN_PROGRESS_SECONDS", 0.0)
    log = io.StringIO()
    console = Console(file=log, force_terminal=False, width=200)
    trainer = Trainer(tiny_config("train.epochs=1"), tmp_path / "run", console=console)
    trainer.fit()
    lines = log.getvalue().splitlines()
    assert any(line.startswith("epoch 1/1: 1/8 batches, train loss") for line in lines), lines
    assert "test set: the bound on 256 images" in lines
    assert f"figures: drawing into {tmp_path / 'run' / 'figures'}" in lines
    assert lines.index("test set: the bound on 256 images") > max(
        i for i, s in enumerate(lines) if s.startswith("epoch")
    )
    assert {p.name for p in trainer.figure_paths} >= {"loss_curves.png", "samples.png"}


def test_slow_steps_report_between_the_25_step_marks(tmp_path, monkeypatch):
    from vaelab.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PLAIN_PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(trainer_module, "PROGRESS_SECONDS", 0.0)  # every step counts as slow
    log = io.StringIO()
    trainer = Trainer(tiny_config("train.epochs=1"), tmp_path / "run", console=Console(file=log, width=200))
    trainer.fit()
    lines = log.getvalue().splitlines()
    assert [n for n in range(1, 9) if any(s.startswith(f"epoch 1/1: {n}/8 batches") for s in lines)] == list(
        range(1, 9)
    ), lines


def test_a_quiet_fit_prints_nothing(tmp_path):
    log = io.StringIO()
    Trainer(tiny_config("train.epochs=1"), tmp_path / "run", console=Console(file=log), figures=False).fit(
        progress=False
    )
    assert log.getvalue() == ""


def test_train_ends_naming_the_figures_report_and_tensorboard(run_cli, tmp_path):
    out = tmp_path / "my run"
    result = run_cli("train", "--out", out, *set_args(TINY + ["train.epochs=1"]))
    assert result.returncode == 0, result.stderr
    stdout = result.stdout.splitlines()
    assert stdout[0].startswith("test: total") and stdout[0].endswith(f"run written to {out}")
    assert stdout[1].startswith(f"figures: {out / 'figures'} (loss_curves.png, reconstructions.png")
    assert stdout[2] == f"report: {out / 'report.md'}"
    assert stdout[3] == f"TensorBoard: tensorboard --logdir '{out}'"
    assert "test set: the bound on 256 images" in result.stderr and "figures: drawing into" in result.stderr


def test_eval_says_each_stage_as_it_starts(run_cli, trained_run):
    result = run_cli("eval", trained_run, "--no-write", "--fd-samples", "50", "--json")
    assert result.returncode == 0, result.stderr
    stages = [line.split(" [")[0] for line in result.stderr.splitlines() if line.startswith("eval: ")]
    assert stages == [
        "eval: the bound on 256 test images",
        "eval: posterior means of 512 training and 256 test images",
        "eval: kNN and logistic-regression probes, silhouette",
        "eval: Fréchet distance of 50 prior samples",
    ]
