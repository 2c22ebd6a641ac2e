"""The run directory: one writer at a time, whole files only, clean failures on paths and disks, Ctrl-C.

The command-line cases start together, once (like tests/test_cli.py): most of each one's cost is
starting Python and importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA, TINY_RUN_RECORDS, set_args
from tests.test_cli import _check_user_error, _main
from vaelab.errors import VaelabError
from vaelab.runs import RunDir, parse_records

HOLD_LOCK = """
import sys, time
from vaelab.runs import RunDir
with RunDir(sys.argv[1]).writing():
    print("held", flush=True)
    time.sleep(120)
"""


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links not followed), by relative path."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if not p.is_symlink() else os.readlink(p).encode())
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def _copy_run(trained_run: Path, to: Path) -> Path:
    shutil.copytree(trained_run, to, symlinks=True)
    return to


def _vaelab(*args) -> list:
    return [sys.executable, "-m", "vaelab", *args]


def _limited(file_size: int, *args: str) -> list[str]:
    """``vaelab ARGS`` in a process whose files may not grow beyond ``file_size`` bytes (writes fail with EFBIG)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size}, {file_size}))\n"
        f"sys.argv = ['vaelab', *{list(args)!r}]\n"
        "from vaelab.cli import main\n"
        "main()\n"
    )
    return [sys.executable, "-c", code]


# --- the command-line cases, started together ------------------------------------------------

TINY_TRAIN = ["--no-figures", "--threads", "1", *set_args(TINY_DATA), "--arch", "mlp", "--set", "model.hidden=[32]"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory, trained_run, cli_env) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    tmp = tmp_path_factory.mktemp("rundir-cli")
    held = _copy_run(trained_run, tmp / "held")
    _copy_run(trained_run, tmp / "resumed-twice")
    full = _copy_run(trained_run, tmp / "disk-full")
    (tmp / "a-file").write_text("not a folder")
    checkpoint_size = (full / "checkpoint" / "last.safetensors").stat().st_size
    cases = {
        # a run whose lock this test process holds
        "held-resume": _vaelab("train", "--resume", held, "--epochs", "3"),
        "held-eval": _vaelab("eval", held, "--fd-samples", "100"),
        "held-train": _vaelab("train", "--out", held, *TINY_TRAIN),
        # two writers of one directory at once
        "together-1": _vaelab("train", "--out", tmp / "together", "--epochs", "2", "--seed", "1", *TINY_TRAIN),
        "together-2": _vaelab("train", "--out", tmp / "together", "--epochs", "2", "--seed", "2", *TINY_TRAIN),
        "resume-1": _vaelab("train", "--resume", tmp / "resumed-twice", "--epochs", "3"),
        "resume-2": _vaelab("train", "--resume", tmp / "resumed-twice", "--epochs", "3"),
        # paths and disks
        "under-a-file": _vaelab("train", "--out", tmp / "a-file" / "run", *TINY_TRAIN),
        "in-proc": _vaelab("train", "--out", "/proc/vaelab-test/run", *TINY_TRAIN),
        "not-utf8": _vaelab("train", "--out", os.fsencode(tmp) + b"/run-\xff", *TINY_TRAIN),
        "bad-data": _vaelab("train", "--out", tmp / "new" / "deep" / "run", "--dataset", tmp / "none.npz", *TINY_TRAIN),
        "disk-full": _limited(checkpoint_size // 2, "train", "--resume", str(full), "--epochs", "3"),
        "usage": _vaelab("train", "--no-such-option"),
    }
    before = {"held": _files(held), "disk-full": _files(full)}
    done = {}
    with RunDir(held).writing():
        procs = {}
        for name, args in cases.items():
            procs[name] = subprocess.Popen(
                [a if isinstance(a, bytes) else str(a) for a in args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=cli_env,
                cwd=tmp,
            )
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    done["before"] = before
    return tmp, done


def test_a_second_writer_is_refused_naming_the_holder_and_changes_nothing(cli):
    tmp, done = cli
    for name in ("held-resume", "held-eval", "held-train"):
        line = _check_user_error(done[name], "being written by", f"pid {os.getpid()}")
        assert "one writer per run directory" in line
    assert _files(tmp / "held") == done["before"]["held"]


def test_two_trainings_into_one_directory_leave_one_run(cli):
    tmp, done = cli
    results = [done["together-1"], done["together-2"]]
    winners = [r for r in results if r.returncode == 0]
    assert len(winners) == 1, [(r.returncode, r.stderr) for r in results]
    loser = next(r for r in results if r.returncode != 0)
    line = _check_user_error(loser)
    assert "being written by" in line or "already holds a run" in line
    seed = 1 if winners[0] is results[0] else 2
    run = tmp / "together"
    meta = json.loads((run / "model.json").read_text())
    assert meta["config"]["train"]["seed"] == seed and f"seed = {seed}" in (run / "config.toml").read_text()
    records = RunDir(run).records()
    assert [(r["epoch"], r["split"]) for r in records] == TINY_RUN_RECORDS


def test_two_resumes_at_once_write_each_record_once(cli):
    tmp, done = cli
    results = [done["resume-1"], done["resume-2"]]
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr for r in results]
    _check_user_error(next(r for r in results if r.returncode == 2), "being written by")
    records = RunDir(tmp / "resumed-twice").records()
    assert [(r["epoch"], r["split"]) for r in records] == [
        (e, s) for e in (1, 2, 3) for s in ("train", "validation")
    ] + [(3, "test")]


def test_unusable_out_paths_end_in_one_line(cli):
    tmp, done = cli
    _check_user_error(done["under-a-file"], "a-file/run", "not a directory")
    _check_user_error(done["in-proc"], "/proc/vaelab-test/run")
    _check_user_error(done["not-utf8"], "not a valid UTF-8 name")
    assert [p.name for p in tmp.iterdir() if p.name.startswith("run-")] == []


def test_a_failed_setup_leaves_no_directory_behind(cli):
    tmp, done = cli
    _check_user_error(done["bad-data"], "none.npz")
    assert not (tmp / "new").exists()


def test_a_full_disk_keeps_the_last_checkpoint_and_no_temporary_file(cli):
    tmp, done = cli
    # whichever file of the epoch's end hits the limit first (TensorBoard's images, the checkpoint) is named
    line = _check_user_error(done["disk-full"], "disk-full", "disk full")
    assert "file too large" in line
    after = _files(tmp / "disk-full")
    before = done["before"]["disk-full"]
    for name in ("checkpoint/last.safetensors", "model.safetensors", "model.json"):
        assert after[name] == before[name], name
    assert not [name for name in after if name.endswith(".tmp")]


def test_a_usage_mistake_is_one_line(cli):
    _, done = cli
    _check_user_error(done["usage"], "--no-such-option", "vaelab train --help")


# --- Ctrl-C ----------------------------------------------------------------------------------


def _interrupt_once(proc: subprocess.Popen, ready, timeout: float = 120) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the process never got ready"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_ctrl_c_in_training_says_how_to_resume(tmp_path, cli_env):
    run = tmp_path / "interrupted run"
    args = ["train", "--out", run, "--epochs", "200", *TINY_TRAIN, "--set", "data.validation_size=0"]
    proc = subprocess.Popen(
        [str(a) for a in _vaelab(*args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env, text=True
    )
    code, err = _interrupt_once(proc, lambda: (run / "checkpoint" / "last.safetensors").exists())
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"interrupted; resume with `vaelab train --resume '{run}'`"
    assert not (run / "model.json").exists(), "the run finished before the interrupt: nothing was tested"
    # and the run resumes from there
    epoch = max(r["epoch"] for r in RunDir(run).records())
    resumed = subprocess.run(
        [str(a) for a in _vaelab("train", "--resume", run, "--epochs", str(epoch + 1))],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run.rglob("*.tmp"))


def test_ctrl_c_in_another_command_is_one_line(trained_run, cli_env):
    args = ["eval", trained_run, "--no-write", "--fd-samples", "100", "--nll", "--k", "5000", "--threads", "1"]
    proc = subprocess.Popen(
        [str(a) for a in _vaelab(*args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env, text=True
    )
    lines: list[str] = []

    def progress_shown() -> bool:  # the first NLL progress line: the command is running
        lines.append(proc.stderr.readline())
        return lines[-1].startswith("NLL")

    code, err = _interrupt_once(proc, progress_shown)
    assert code == 130, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()][-1] == "interrupted"


# --- the lock --------------------------------------------------------------------------------


def test_a_killed_writer_does_not_block_the_next(trained_run, tmp_path, cli_env):
    run = _copy_run(trained_run, tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, env=cli_env, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(VaelabError, match=f"being written by python -c .*pid {holder.pid}"), RunDir(run).writing():
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with RunDir(run).writing() as writer:
        writer.append({"epoch": 2, "split": "note"})
    assert RunDir(run).records()[-1] == {"epoch": 2, "split": "note"}


def test_taking_the_lock_removes_stale_temporary_files(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    (run / "figures").mkdir(exist_ok=True)
    stale = [
        run / "checkpoint" / ".last.safetensors.k2j3h4.tmp",
        run / ".model.json.abc123.tmp",
        run / "figures" / ".samples.png.x9y8.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a file")
    (run / "notes.tmp").write_text("the user's own")
    with RunDir(run).writing():
        assert not any(p.exists() for p in stale)
    assert (run / "notes.tmp").read_text() == "the user's own"


def test_a_folder_made_for_a_run_goes_when_the_run_fails_before_its_first_checkpoint(tmp_path):
    run = RunDir(tmp_path / "made" / "for" / "run")
    with pytest.raises(VaelabError, match="setup failed"), run.writing(create=True):
        run.config.write_text("[train]\n")
        raise VaelabError("setup failed")
    assert not (tmp_path / "made").exists()
    with pytest.raises(VaelabError, match="later"), run.writing(create=True):
        run.checkpoint.parent.mkdir()
        run.checkpoint.write_bytes(b"a checkpoint")
        raise VaelabError("later")
    assert run.checkpoint.exists()  # something to resume: kept
    existing = RunDir(tmp_path / "existing")
    existing.path.mkdir()
    with pytest.raises(VaelabError), existing.writing(create=True):
        raise VaelabError("setup failed")
    assert existing.path.is_dir()  # not ours to remove


class _Terminated(KeyboardInterrupt):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated


def test_an_interrupt_just_after_the_lock_is_taken_still_removes_the_folder_made(tmp_path, monkeypatch):
    # the CI flake: SIGTERM sent the moment .lock.json appeared left the folder behind
    run = RunDir(tmp_path / "made" / "run")
    take = RunDir._acquire

    def take_then_signal(self, create):
        take(self, create)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives before the caller's cleanup is in place

    monkeypatch.setattr(RunDir, "_acquire", take_then_signal)
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with pytest.raises(_Terminated), run.writing(create=True):
            pytest.fail("the block ran although the signal came before it")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not (tmp_path / "made").exists()


def test_an_interrupt_while_the_lock_is_being_taken_removes_the_folder_made(tmp_path, monkeypatch):
    def interrupted(path):
        raise _Terminated

    monkeypatch.setattr("vaelab.runs.rundir.remove_stale_temp_files", interrupted)  # after .lock.json is written
    run = RunDir(tmp_path / "made" / "run")
    with pytest.raises(_Terminated), run.writing(create=True):
        pytest.fail("the block ran although taking the lock failed")
    assert not (tmp_path / "made").exists()
    monkeypatch.undo()
    with run.writing(create=True):  # and nothing of the failed attempt is held
        assert run.path.is_dir()


def test_a_folder_another_writer_makes_first_is_taken_as_theirs(tmp_path, monkeypatch):
    # the CI flake: two trainings both saw no folder; the second mkdir's EEXIST read "not a directory"
    run = RunDir(tmp_path / "made" / "run")
    mkdir = Path.mkdir

    def made_by_another_first(self, *args, **kwargs):
        if self == run.path and not self.exists():
            mkdir(self, parents=True)  # the other process wins the race
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", made_by_another_first)
    with pytest.raises(RuntimeError), run.writing(create=True):
        assert run.path.is_dir()
        with pytest.raises(VaelabError, match="being written by"):  # and a rival still meets our lock
            _rival_writer(run.path)
        raise RuntimeError
    assert run.path.is_dir()  # the folder was theirs: our failure does not remove it


def _rival_writer(path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from vaelab.runs import RunDir\nwith RunDir({str(path)!r}).writing(create=True): pass",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise VaelabError(out.stderr.strip().splitlines()[-1])


# --- metrics.jsonl ---------------------------------------------------------------------------


def test_records_skip_a_torn_last_line_and_refuse_a_bad_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    whole = '{"epoch": 1, "split": "train", "total": 1.5}\n'
    assert parse_records(whole + '{"epoch": 2, "spl', path) == [{"epoch": 1, "split": "train", "total": 1.5}]
    with pytest.raises(VaelabError, match="line 2 is not JSON"):
        parse_records(whole + "{oops\n" + whole, path)
    with pytest.raises(VaelabError, match="line 1 is not a metrics record"):
        parse_records('["epoch", 1]\n', path)
    with pytest.raises(VaelabError, match="line 1 is not a metrics record"):
        parse_records('{"epoch": "1", "split": "train"}\n', path)


def test_appending_replaces_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.metrics.write_text('{"epoch": 1, "split": "train"}\n{"epoch": 2, "split": "tr')
    with pytest.raises(RuntimeError, match="without its lock"):
        run.append({"epoch": 2, "split": "train"})
    with run.writing():
        run.append({"epoch": 2, "split": "train"})
    assert run.metrics.read_text() == '{"epoch": 1, "split": "train"}\n{"epoch": 2, "split": "train"}\n'


def test_a_resume_keeps_the_analysis_records_of_eval(trained_run, tmp_path):
    from vaelab.train import Trainer

    run = RunDir(_copy_run(trained_run, tmp_path / "run"))
    analysis = {"epoch": 2, "split": "test", "kind": "analysis", "total": 1.0, "reconstruction": 1.0, "kl": 0.0}
    with run.writing():
        run.append(analysis)
    trainer = Trainer.resume(run.path, figures=False)
    trainer.config.train.epochs = 3
    trainer.fit(progress=False)
    records = run.records()
    assert [(r["epoch"], r["split"], r.get("kind")) for r in records] == [
        (1, "train", None),
        (1, "validation", None),
        (2, "train", None),
        (2, "validation", None),
        (2, "test", "analysis"),
        (3, "train", None),
        (3, "validation", None),
        (3, "test", None),
    ]
    assert records[4] == analysis


def test_a_resume_refuses_a_malformed_metrics_line(trained_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0] + '{"split": "train"}\n' + "".join(lines[1:]))
    before = _files(run)
    result = _main(monkeypatch, capsys, "train", "--resume", str(run), "--epochs", "3")
    _check_user_error(result, "metrics.jsonl line 2", "not a metrics record")
    assert _files(run) == before


# --- links -----------------------------------------------------------------------------------


def test_writes_never_follow_a_link_out_of_the_run(trained_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("someone else's file\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(elsewhere)
    result = _main(monkeypatch, capsys, "train", "--resume", str(run), "--epochs", "3")
    _check_user_error(result, str(run / "metrics.jsonl"), "symbolic link")
    assert elsewhere.read_text() == "someone else's file\n"

    figures = _copy_run(trained_run, tmp_path / "figures-linked")
    (tmp_path / "other-figures").mkdir()
    (figures / "figures").symlink_to(tmp_path / "other-figures")
    with pytest.raises(VaelabError, match="figures is a symbolic link"), RunDir(figures).writing():
        pass
    assert list((tmp_path / "other-figures").iterdir()) == []


def test_reads_of_a_run_stay_inside_it(trained_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    outside = tmp_path / "outside.json"
    shutil.move(run / "model.json", outside)
    (run / "model.json").symlink_to(outside)
    result = _main(monkeypatch, capsys, "eval", str(run), "--no-write")
    _check_user_error(result, "model.json leads out of the run directory")
    # a link that stays inside the run is only a name
    inside = _copy_run(trained_run, tmp_path / "inside")
    shutil.move(inside / "metrics.jsonl", inside / "metrics-copy.jsonl")
    (inside / "metrics.jsonl").symlink_to("metrics-copy.jsonl")
    assert RunDir(inside).records() == RunDir(trained_run).records()


# --- shipped files ---------------------------------------------------------------------------


def test_shipped_results_hold_no_absolute_paths():
    import vaelab.pretrained

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    files = list(Path(vaelab.pretrained.__file__).parent.glob("*/results.json"))
    assert len(files) >= 5
    for path in files:
        result = json.loads(path.read_text())
        assert result["run_dir"] == path.parent.name
        assert not [s for s in strings(result) if os.path.isabs(s) or "/work/" in s], path


def test_data_and_config_files_that_are_pipes_or_devices_are_refused_without_reading(tmp_path, run_cli):
    import os

    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    config_fifo = tmp_path / "config.toml"
    os.mkfifo(config_fifo)
    for args in (["--dataset", str(fifo)], ["--config", str(config_fifo)], ["--config", "/dev/zero"]):
        result = run_cli("train", "--out", str(tmp_path / "run"), *args)  # a read would block or never end
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].endswith("is not a regular file (a folder, device or pipe)")
        assert not (tmp_path / "run").exists()
