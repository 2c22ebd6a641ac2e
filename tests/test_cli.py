"""The command line, run as ``python -m vaelab``: user mistakes give one ``error:`` line and exit 2.

Starting Python and importing torch is most of each command's cost, so the commands of this module
are started together, once, and each test checks one of the results.
The two tests of how a message is printed, and the one of a successful ``eval``, call the same
``main()`` in this process instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IDX_NAMES, TINY, set_args, write_fake_idx_set
from tests.conftest import in_process_cli as _main
from vaelab.errors import VaelabError

QUICK = ["--no-figures", *set_args(TINY)]


def _cases(tmp: Path, trained_run: Path) -> dict[str, list[str]]:
    truncated = write_fake_idx_set(tmp / "truncated-idx")
    images = truncated / IDX_NAMES[0]
    images.write_bytes(images.read_bytes()[:-100])

    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("[train]\nepochs = = 3\n")

    not_a_run = tmp / "not-a-run"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("hello")

    existing = tmp / "existing-run"
    shutil.copytree(trained_run, existing)

    out = str(tmp / "out-{}")
    return {
        "truncated-idx": ["train", "--dataset", str(truncated), "--out", out.format(1), *QUICK],
        "not-pd-prior": [
            "train",
            "--out",
            out.format(2),
            *QUICK,
            "--set",
            "model.prior=correlated",
            "--set",
            "model.prior_cov=[[1,1.5],[1.5,1]]",
        ],
        "unknown-key": ["train", "--out", out.format(3), *QUICK, "--set", "train.bogus=1"],
        "invalid-toml": ["train", "--config", str(bad_toml), "--out", out.format(4), "--no-figures"],
        "eval-not-a-run": ["eval", str(not_a_run)],
        "out-is-a-run": ["train", "--out", str(existing), *QUICK],
        "datasets": ["datasets", "--json"],
        "help": ["--help"],
        "train-help": ["train", "--help"],
    }


@pytest.fixture(scope="module")
def cli_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def results(cli_tmp, trained_run, cli_env) -> dict[str, subprocess.CompletedProcess]:
    tmp = cli_tmp
    cases = _cases(tmp, trained_run)
    procs = {}
    for name, args in cases.items():
        log_out, log_err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(log_out, "wb") as out, open(log_err, "wb") as err:
            procs[name] = (
                subprocess.Popen([sys.executable, "-m", "vaelab", *args], stdout=out, stderr=err, env=cli_env, cwd=tmp),
                args,
                log_out,
                log_err,
            )
    done = {}
    for name, (proc, args, log_out, log_err) in procs.items():
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        done[name] = subprocess.CompletedProcess(
            args, code, log_out.read_text(encoding="utf-8"), log_err.read_text(encoding="utf-8")
        )
    return done


def _check_user_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, no traceback, and exactly one stderr line starting 'error:' holding the message."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_truncated_idx_dataset(results):
    _check_user_error(results["truncated-idx"], "truncated", "train-images-idx3-ubyte")


def test_not_positive_definite_prior(results):
    _check_user_error(results["not-pd-prior"], "positive definite")


def test_unknown_config_key(results):
    _check_user_error(results["unknown-key"], "train.bogus")


def test_invalid_toml_config(results):
    _check_user_error(results["invalid-toml"], "bad.toml", "not valid TOML")


def test_eval_on_a_directory_that_is_not_a_run(results):
    _check_user_error(results["eval-not-a-run"], "not-a-run", "model.json")


def test_out_pointing_at_an_existing_run(results, cli_tmp, trained_run):
    _check_user_error(results["out-is-a-run"], "already holds a run", "--resume")
    # and the run was left alone
    existing = cli_tmp / "existing-run"
    assert (existing / "metrics.jsonl").read_text() == (trained_run / "metrics.jsonl").read_text()


def test_error_message_is_printed_verbatim(monkeypatch, capsys, tmp_path):
    result = _main(monkeypatch, capsys, "train", "--out", str(tmp_path / "r"), "--set", "train.bogus=1")
    line = _check_user_error(result, "train.bogus")
    assert "known keys in [train]:" in line


def test_error_message_with_markup_like_text(monkeypatch, capsys, tmp_path):
    result = _main(monkeypatch, capsys, "train", "--out", str(tmp_path / "r"), "--set", "train.precision=[/x]")
    _check_user_error(result, "train.precision", "[/x]")


def test_no_run_directory_left_by_failed_commands(results, cli_tmp):
    for i in (1, 2, 3, 4):
        assert not (cli_tmp / f"out-{i}" / "model.json").exists()
    assert not (cli_tmp / "runs").exists()


def test_eval_on_a_run_matches_its_recorded_test_numbers(monkeypatch, capsys, trained_run):
    # --no-write: the session's shared run must keep exactly the records training wrote (test_train checks them)
    result = _main(monkeypatch, capsys, "eval", str(trained_run), "--json", "--no-write", "--fd-samples", "500")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    recorded = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert recorded["split"] == "test"
    assert report["dataset"] == "mnist" and report["split"] == "test"
    assert report["images"] == 256  # the run's data.test_limit
    for key in ("total", "reconstruction", "kl"):
        assert report[key] == pytest.approx(recorded[key], rel=1e-6), key
    assert len(report["kl_per_dim"]) == 2


def test_datasets_json(results):
    result = results["datasets"]
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"mnist", "fashion-mnist"} <= set(rows)
    assert rows["mnist"]["location"] == "vaelab package"
    assert all(row["description"] for row in rows.values())


def test_help(results):
    result = results["help"]
    assert result.returncode == 0, result.stderr
    for command in ("train", "eval", "datasets", "plot", "sample"):
        assert command in result.stdout
    train_help = results["train-help"].stdout
    assert "[data]" in train_help and "[train]" in train_help  # not eaten as rich markup


def test_resume_refuses_options_it_would_ignore(monkeypatch, capsys, trained_run):
    result = _main(monkeypatch, capsys, "train", "--resume", str(trained_run), "--lr", "0.1")
    _check_user_error(result, "--lr")


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.toml").write_text("[train]\nepochs = 1\n")  # what a run killed in epoch 1 leaves
    from vaelab.cli.app import _check_fresh_out

    _check_fresh_out(out)  # no error: there is nothing to lose
    (out / "model.json").write_text("{}")
    with pytest.raises(VaelabError, match="--resume"):
        _check_fresh_out(out)
