"""A run directory: its files, its metrics log, and the lock that lets one process write it at a time.

Layout (DESIGN.md): ``config.toml`` (resolved config), ``model.safetensors`` + ``model.json``,
``checkpoint/last.safetensors`` (for resume), ``metrics.jsonl``, TensorBoard ``events.*``,
``figures/*.png``, ``report.md``; ``snapshots/minutes-M.safetensors`` with ``train.snapshot_minutes``
(:mod:`vaelab.runs.snapshots`); ``results.json`` for ``vaelab reproduce``; ``.lock`` and ``.lock.json``
(the writer).

One writer: whatever changes a run (``train``, ``train --resume``, ``reproduce``, ``eval`` that writes)
holds :meth:`RunDir.writing`. It is an OS lock (``flock``, through the filelock library), so it dies
with its process: a killed run never blocks the next writer. A second writer is refused with an error
naming the holder (``.lock.json``: pid, host, command, start time), before it changes anything.
Taking the lock removes the temporary files (``.*.tmp``) a killed writer left behind.

``metrics.jsonl``: one JSON record per line. Every change rewrites the whole file through
:func:`vaelab.io.atomic_write`, so a reader sees the log before a record or after it, never half of one
(a log has a few hundred lines; rewriting them costs nothing next to an epoch). A last line without its
newline, which versions that appended in place could leave after a kill, is skipped; any other line
that is not a record is an error naming the line, for a writer (which appends nothing then) as for a reader.

Links: a writer refuses a run whose own files or folders are symbolic links (a ``metrics.jsonl`` linked
to elsewhere would otherwise be written there); a reader refuses a run file that resolves outside the run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from vaelab.errors import VaelabError
from vaelab.io import atomic_write_json, atomic_write_text, cannot_write

CONFIG = "config.toml"
MODEL = "model.safetensors"
MODEL_JSON = "model.json"
CHECKPOINT = Path("checkpoint") / "last.safetensors"
METRICS = "metrics.jsonl"
REPORT = "report.md"
FIGURES = "figures"
RESULTS = "results.json"
SNAPSHOTS = "snapshots"
LOCK = ".lock"
HOLDER = ".lock.json"

# the run's own names, directly inside it; checkpoint/, figures/ and snapshots/ are checked entry by entry too
OWN_NAMES = (CONFIG, MODEL, MODEL_JSON, "checkpoint", METRICS, REPORT, FIGURES, RESULTS, SNAPSHOTS, LOCK, HOLDER)
TEMP_FOLDERS = (".", "checkpoint", FIGURES, SNAPSHOTS)


@dataclass
class _Hold:
    lock: filelock.BaseFileLock
    created: Path | None = None  # the topmost folder this process made for the run, if any


_HELD: dict[Path, _Hold] = {}  # run directories this process is writing (the lock is re-entrant here)


@dataclass
class RunDir:
    """One run directory. Paths are plain; :meth:`writing` and :meth:`own` are where the rules live."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def model_json(self) -> Path:
        return self.path / MODEL_JSON

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def figures(self) -> Path:
        return self.path / FIGURES

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def snapshots(self) -> Path:
        return self.path / SNAPSHOTS

    def has_progress(self) -> bool:
        """Whether there is anything to resume or keep: a checkpoint or a saved model."""
        return self.checkpoint.exists() or self.model_json.exists()

    # --- reading ---------------------------------------------------------------------------------

    def own(self, name: str | Path) -> Path:
        """The path of one of the run's files, for reading: refused if a link leads it out of the run."""
        path = self.path / name
        target = path.resolve()
        if not target.is_relative_to(self.path.resolve()):
            raise VaelabError(
                f"{path} leads out of the run directory (to {target}); vaelab reads a run's files only from inside it"
            )
        return path

    def records(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (empty if it has none yet)."""
        path = self.own(METRICS)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as err:
            raise VaelabError(f"cannot read {path} ({err})") from None
        return parse_records(text, path)

    # --- writing ---------------------------------------------------------------------------------

    def append(self, *records: dict[str, Any]) -> None:
        """Add records at the end of ``metrics.jsonl`` (the writer's: hold :meth:`writing`).

        A line already there that is not a record is refused, as :meth:`records` refuses it, before anything
        is written: appending would hand the next reader the same broken file.
        """
        self._require_writer()
        text = self._metrics_text()
        parse_records(text, self.metrics)
        atomic_write_text(self.metrics, text + "".join(json.dumps(r) + "\n" for r in records))

    def keep_records(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite ``metrics.jsonl`` with only the records ``keep`` accepts, in their order."""
        self._require_writer()
        if self.metrics.exists():
            kept = [r for r in parse_records(self._metrics_text(), self.metrics) if keep(r)]
            atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def _metrics_text(self) -> str:
        """The log's text, whole lines only: a last line torn by a kill is left out (its epoch is replayed)."""
        try:
            text = self.metrics.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as err:
            raise VaelabError(f"cannot read {self.metrics} ({err})") from None
        whole, last = text[: text.rfind("\n") + 1], text[text.rfind("\n") + 1 :]
        return whole + last + "\n" if last.strip() and _is_record(last) else whole

    def _require_writer(self) -> None:
        if self._key() not in _HELD:
            raise RuntimeError(f"{self.path} is written without its lock; use RunDir.writing()")

    def _key(self) -> Path:
        return Path(os.path.abspath(self.path))

    @contextmanager
    def writing(self, create: bool = False) -> Iterator[RunDir]:
        """Hold the run's writer lock for the block (re-entrant within a process).

        ``create``: make the directory if it is missing; if the block then fails before the run has a
        checkpoint or a model, the folders made for it are removed again (nothing to resume or keep).
        """
        key = self._key()
        if key in _HELD:  # re-entrant: the outermost block holds the lock and cleans up
            yield self
            return
        try:
            self._acquire(create)  # registers the hold first thing, so an interrupt from then on is seen below
            yield self
        except BaseException:
            hold = _HELD.get(key)
            if hold is not None and hold.created is not None and not self.has_progress():
                shutil.rmtree(self.path, ignore_errors=True)  # ours alone: we made it and hold its lock
                _remove_empty_parents(self.path, hold.created)
            raise
        finally:
            hold = _HELD.pop(key, None)
            if hold is not None:
                self._release(hold)

    def _acquire(self, create: bool) -> None:
        """Take the run's lock and register it in ``_HELD``; a failure (an interrupt too) undoes what was done."""
        path = self.path
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise VaelabError(
                f"the run directory {str(path)!r} is not a valid UTF-8 name; choose one that is"
            ) from None
        if path.exists() and not path.is_dir():
            raise VaelabError(f"{path} is a file, not a run directory")
        if not path.exists() and not create:
            raise VaelabError(f"{path} does not exist: no run directory there")
        created = None if path.exists() else _topmost_missing(path)
        key = self._key()
        lock = filelock.FileLock(str(path / LOCK))
        try:
            if created is not None:
                try:
                    path.mkdir(parents=True)
                except OSError as err:
                    if not (isinstance(err, FileExistsError) and path.is_dir()):
                        raise cannot_write(path, err, "create") from None
                    created = None  # another writer made it a moment ago: the lock below decides between us
            self.check_links()
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                raise VaelabError(
                    f"{path} is being written by {self.holder()}; one writer per run directory: "
                    "wait for it to finish, or stop it"
                ) from None
            except OSError as err:
                raise cannot_write(path / LOCK, err) from None
            _HELD[key] = _Hold(lock, created=created)
            atomic_write_json(path / HOLDER, _holder_record())
            remove_stale_temp_files(path)
        except BaseException:
            _HELD.pop(key, None)
            if lock.is_locked:
                if created is not None:  # a folder we made and hold: what we put in it goes, so it can be removed
                    (path / HOLDER).unlink(missing_ok=True)
                    (path / LOCK).unlink(missing_ok=True)
                lock.release()
            if created is not None:  # without the lock another writer may be inside: only if still empty
                _remove_empty_parents(path, created, including=True)
            raise

    def _release(self, hold: _Hold) -> None:
        try:
            (self.path / HOLDER).unlink(missing_ok=True)  # before the unlock: the next holder writes its own
        finally:
            hold.lock.release()

    def check_links(self) -> None:
        """Refuse to write a run whose own files or folders are symbolic links."""
        names = [Path(n) for n in OWN_NAMES]
        for folder in ("checkpoint", FIGURES, SNAPSHOTS):
            inside = self.path / folder
            if inside.is_dir() and not inside.is_symlink():
                names += [Path(folder) / entry for entry in os.listdir(inside)]
        for name in names:
            if (self.path / name).is_symlink():
                link = self.path / name
                raise VaelabError(
                    f"{link} is a symbolic link (to {os.readlink(link)}); vaelab writes a run's files only "
                    "inside its directory: replace the link with the file itself"
                )

    def holder(self) -> str:
        """Who holds the lock, in words (from ``.lock.json``)."""
        try:
            info = json.loads((self.path / HOLDER).read_text(encoding="utf-8"))
            return (
                f"{info['command']} (pid {info['pid']} on {info['host']}, since {info['since']})"
                if isinstance(info, dict)
                else "another process"
            )
        except (OSError, ValueError, KeyError):
            return "another process"  # between its lock and its note, or a note we cannot read


def parse_records(text: str, path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` text as records: objects with an integer ``epoch`` and a string ``split``."""
    lines = text.split("\n")
    torn = lines.pop()  # "" when the text ends in a newline
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise VaelabError(f"{path} line {number} is not JSON ({err}); remove or repair that line") from None
        if not _is_record(record):
            raise VaelabError(
                f"{path} line {number} is not a metrics record (an object with an integer 'epoch' and a "
                "'split'); remove or repair that line"
            )
        records.append(record)
    if torn.strip() and _is_record(torn):  # else torn by a kill mid-append
        records.append(json.loads(torn))
    return records


def _is_record(record: Any) -> bool:
    """A metrics record (given parsed, or as one line of JSON): an integer ``epoch`` >= 0 and a ``split``."""
    if isinstance(record, str):
        try:
            record = json.loads(record)
        except ValueError:
            return False
    return (
        isinstance(record, dict)
        and type(record.get("epoch")) is int
        and record["epoch"] >= 0
        and isinstance(record.get("split"), str)
    )


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove the ``.*.tmp`` files that atomic writes of a killed process left in the run."""
    removed = []
    for folder in TEMP_FOLDERS:
        directory = Path(run_dir) / folder
        if not directory.is_dir() or directory.is_symlink():
            continue
        for path in directory.glob(".*.tmp"):
            if path.is_symlink() or path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _remove_empty_parents(path: Path, top: Path, including: bool = False) -> None:
    """Remove the empty folders from ``path`` (or its parent) up to ``top``, which this process made."""
    folder = path if including else path.parent
    while folder.is_relative_to(top):
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass  # never made: mkdir stopped above it
        except OSError:
            return  # not empty: someone else's now
        if folder == top:
            return
        folder = folder.parent


def _topmost_missing(path: Path) -> Path:
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def _holder_record() -> dict[str, Any]:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "vaelab"):
        program = "vaelab"
    elif program in ("-c", "-m", "-"):
        program = f"python {program}"
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([program, shlex.join(sys.argv[1:])]).strip(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
