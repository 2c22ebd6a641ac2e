"""Bad input from the second campaign: each case ends in one ``error:`` line and exit 2 (or the
convention of its signal), never a crash, a traceback or a half-made run.

The command-line cases that need a process of their own (a crash would take pytest with it, a signal,
a file-size limit, a closed pipe) start together, once, as in tests/test_cli.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_config
from tests.test_cli import _check_user_error, _main
from tests.test_rundir import TINY_TRAIN, _copy_run, _limited, _vaelab
from vaelab.config import MAX_HIDDEN_LAYERS, MAX_THREADS, RunConfig, apply_overrides
from vaelab.errors import VaelabError
from vaelab.runs import RunDir


def _closed_stdout(*args: str) -> list[str]:
    """``vaelab ARGS`` writing into a pipe nobody reads any more (``vaelab ARGS | head -0``)."""
    code = (
        "import os, subprocess, sys\n"
        "read, write = os.pipe()\n"
        "os.close(read)\n"
        f"sys.exit(subprocess.run([sys.executable, '-m', 'vaelab', *{list(args)!r}], stdout=write).returncode)\n"
    )
    return [sys.executable, "-c", code]


@pytest.fixture(scope="module")
def cli(tmp_path_factory, cli_env) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    tmp = tmp_path_factory.mktemp("hardening-cli")
    cases = {
        "eval-threads": _vaelab("eval", "--pretrained", "seed-2d", "--threads", "100000"),  # was SIGSEGV
        "eval-threads-2**70": _vaelab("eval", "--pretrained", "seed-2d", "--threads", str(2**70)),  # was a traceback
        "eval-threads-negative": _vaelab("eval", "--pretrained", "seed-2d", "--threads", "-1"),
        "bench-threads": _vaelab("bench", "--quick", "--threads", "100000"),
        "file-size-0": _limited(0, "train", "--out", str(tmp / "no-room" / "run"), *TINY_TRAIN),
        "bare": _vaelab(),
        "pipe-list": _closed_stdout("list"),
        "pipe-list-json": _closed_stdout("list", "--json"),
        "pipe-version": _closed_stdout("--version"),
    }
    procs = {
        name: subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env, cwd=tmp)
        for name, args in cases.items()
    }
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    return tmp, done


# --- 1. --threads: one bound everywhere ------------------------------------------------------------


@pytest.mark.parametrize("name", ["eval-threads", "eval-threads-2**70", "eval-threads-negative", "bench-threads"])
def test_threads_beyond_the_bound_are_one_line(cli, name):
    _check_user_error(cli[1][name], "--threads", f"a number of threads up to {MAX_THREADS}, not")


def test_the_config_uses_the_same_thread_bound():
    apply_overrides(RunConfig(), [f"train.threads={MAX_THREADS}"])
    with pytest.raises(VaelabError, match=f"train.threads must be .* up to {MAX_THREADS}, not {MAX_THREADS + 1}"):
        apply_overrides(RunConfig(), [f"train.threads={MAX_THREADS + 1}"])


# --- 2. --pretrained takes a name, never a path -----------------------------------------------------


def test_pretrained_refuses_paths(monkeypatch, capsys):
    import vaelab.pretrained

    shipped = vaelab.pretrained.path("seed-2d")
    for name in (str(shipped), str(shipped.resolve()), "../pretrained/seed-2d", "./seed-2d", "", "."):
        with pytest.raises(VaelabError, match="available: .*seed-2d"):
            vaelab.pretrained.path(name)
    result = _main(monkeypatch, capsys, "sample", "--pretrained", str(shipped), "-n", "1", "--out", "/dev/null")
    _check_user_error(result, "no pretrained model named", "available:", "burda-iwae")


# --- 3. model.hidden has a bounded number of layers -----------------------------------------------


def test_the_number_of_hidden_layers_is_bounded():
    apply_overrides(RunConfig(), [f"model.hidden={[4] * MAX_HIDDEN_LAYERS}"])
    with pytest.raises(VaelabError, match=f"model.hidden lists 30000 layers.*at most {MAX_HIDDEN_LAYERS}"):
        apply_overrides(RunConfig(), [f"model.hidden={[4] * 30_000}"])


# --- 4. only grey or RGB images ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 8, 8), (8, 8, 2), (4, 8, 8)])
def test_images_of_other_channel_counts_are_refused_on_loading(tmp_path, monkeypatch, capsys, shape):
    rng = np.random.default_rng(0)
    path = tmp_path / "two-channels.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (20, *shape), dtype=np.uint8),
        y_train=rng.integers(0, 10, 20),
        x_test=rng.integers(0, 256, (6, *shape), dtype=np.uint8),
        y_test=rng.integers(0, 10, 6),
    )
    from vaelab.data import load_dataset

    with pytest.raises(VaelabError, match=r"two-channels\.npz.* channels \(shape .*1 \(grey\) or 3 \(RGB\)"):
        load_dataset(str(path))
    out = tmp_path / "run"
    result = _main(monkeypatch, capsys, "train", "--dataset", str(path), "--out", str(out), *TINY_TRAIN)
    _check_user_error(result, "two-channels.npz", "channels")
    assert not out.exists()


# --- 5. a file-size limit of 0 ---------------------------------------------------------------------


def test_a_file_size_limit_of_zero_is_one_line_and_leaves_no_folder(cli):
    tmp, done = cli
    _check_user_error(done["file-size-0"], "file too large")
    assert not (tmp / "no-room").exists(), sorted(p.name for p in (tmp / "no-room").rglob("*"))


# --- 6. bare `vaelab`, and a reader that goes away --------------------------------------------------


def test_bare_vaelab_prints_the_help_and_exits_0(cli):
    result = cli[1]["bare"]
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr
    for command in ("train", "eval", "list"):
        assert command in result.stdout


@pytest.mark.parametrize("name", ["pipe-list", "pipe-list-json", "pipe-version"])
def test_a_closed_stdout_ends_quietly_with_141(cli, name):
    result = cli[1][name]
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


# --- 7. a huge beta ends in the divergence message ------------------------------------------------


def test_a_huge_beta_ends_in_the_divergence_message_naming_beta(tmp_path):
    from vaelab.train import Trainer

    run_dir = tmp_path / "run"
    # the KL term's gradient, squared in Adam's second moment, overflows while the weights stay finite
    trainer = Trainer(tiny_config("train.epochs=1", "objective.beta=1e30"), run_dir, figures=False)
    with pytest.raises(VaelabError, match="training diverged in epoch 1") as caught:
        trainer.fit(progress=False)
    message = str(caught.value)
    assert "objective.beta = 1e+30" in message and "refusing to save" not in message
    assert not run_dir.exists()


# --- 8. eval and a malformed metrics.jsonl -------------------------------------------------------


def test_eval_refuses_a_malformed_metrics_log_before_writing(trained_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join([lines[0], "{not json\n", *lines[1:]]))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    result = _main(monkeypatch, capsys, "eval", str(run), "--fd-samples", "100")
    _check_user_error(result, "metrics.jsonl line 2", "not JSON")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


def test_appending_to_a_malformed_metrics_log_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.writing(create=True):
        run.metrics.write_text('{"epoch": 1, "split": "train"}\n[1, 2]\n')
        with pytest.raises(VaelabError, match="metrics.jsonl line 2 is not a metrics record"):
            run.append({"epoch": 2, "split": "train"})
        assert run.metrics.read_text() == '{"epoch": 1, "split": "train"}\n[1, 2]\n'


# --- 9. objective.gradient = dreg only for the IWAE bound ------------------------------------------


def test_dreg_is_refused_for_a_bound_other_than_iwae():
    with pytest.raises(VaelabError, match="objective.gradient = dreg .* objective.name = elbo"):
        apply_overrides(RunConfig(), ["objective.gradient=dreg"])
    config = apply_overrides(RunConfig(), ["objective.gradient=dreg", "objective.name=iwae", "objective.k=2"])
    assert config.objective.gradient == "dreg"


# --- 10. SIGTERM unwinds like Ctrl-C -------------------------------------------------------------


def _terminate_when(proc: subprocess.Popen, ready, timeout: float = 120) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the process never got ready"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _train(run: Path, cli_env) -> subprocess.Popen:
    args = ["train", "--out", run, "--epochs", "200", *TINY_TRAIN, "--set", "data.validation_size=0"]
    return subprocess.Popen(
        [str(a) for a in _vaelab(*args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env, text=True
    )


def test_sigterm_in_training_says_how_to_resume_and_exits_143(tmp_path, cli_env):
    run = tmp_path / "run"
    code, err = _terminate_when(_train(run, cli_env), lambda: (run / "checkpoint" / "last.safetensors").exists())
    assert code == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"terminated (SIGTERM); resume with `vaelab train --resume {run}`"
    assert not (run / "model.json").exists(), "the run finished before the signal: nothing was tested"
    assert not (run / ".lock.json").exists()  # the lock was let go as on Ctrl-C
    assert RunDir(run).records()  # the log it leaves reads back


def test_sigterm_before_the_first_checkpoint_leaves_no_folder(tmp_path, cli_env):
    run = tmp_path / "run"
    code, err = _terminate_when(_train(run, cli_env), lambda: (run / ".lock.json").exists())
    assert code == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("terminated (SIGTERM) before the run's first checkpoint")
    assert not run.exists()


def test_a_sigterm_handler_is_not_left_behind_in_process(monkeypatch, capsys):
    before = signal.getsignal(signal.SIGTERM)
    _main(monkeypatch, capsys, "--version")
    assert signal.getsignal(signal.SIGTERM) == before
