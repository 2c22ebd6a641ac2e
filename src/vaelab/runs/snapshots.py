"""Snapshots: the weights a run would save, written every ``train.snapshot_minutes`` of training time.

``snapshots/minutes-M.safetensors``, M the mark the training clock passed (``minutes-005``, ``minutes-002.5``):
the weights the run evaluates and saves (their moving average where ``train.ema_decay`` > 0), one safetensors
file written atomically, with where training stood in its metadata (strings, as safetensors keeps them):
``training_seconds`` (the clock ``train.minutes`` counts), ``mark_minutes``, ``epoch`` (the one in progress,
from 1), ``step`` (its steps done), ``steps_per_epoch`` and ``weights`` (``ema`` or ``raw``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from vaelab.errors import VaelabError
from vaelab.io import atomic_write
from vaelab.runs.rundir import SNAPSHOTS, RunDir

FORMAT = "vaelab-snapshot"
PATTERN = "minutes-*.safetensors"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    training_seconds: float
    mark_minutes: str
    epoch: int  # the epoch in progress, from 1
    step: int  # its optimiser steps done
    steps_per_epoch: int
    weights: str  # "ema" (the moving average) or "raw"

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".safetensors")

    @property
    def training_minutes(self) -> float:
        return self.training_seconds / 60

    @property
    def epochs_completed(self) -> int:
        return self.epoch if self.step >= self.steps_per_epoch else self.epoch - 1

    @property
    def epoch_fraction(self) -> float:
        """Epochs trained, as a fraction: 2.5 is half-way through the third."""
        return self.epoch - 1 + self.step / self.steps_per_epoch

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "training_seconds": repr(float(self.training_seconds)),
            "mark_minutes": self.mark_minutes,
            "epoch": str(self.epoch),
            "step": str(self.step),
            "steps_per_epoch": str(self.steps_per_epoch),
            "weights": self.weights,
        }


def mark_name(index: int, every_minutes: float) -> tuple[str, str]:
    """(file stem, mark) of the ``index``-th mark of a clock marked every ``every_minutes``: exact decimals, the
    integer part padded to 3 digits, as many decimals as the interval has (5 -> minutes-010, 2.5 -> minutes-002.5)."""
    step = Decimal(repr(float(every_minutes)))
    digits = max(0, -int(step.normalize().as_tuple().exponent))
    mark = f"{step * index:.{digits}f}"
    head, _, tail = mark.partition(".")
    return f"minutes-{head.zfill(3)}" + (f".{tail}" if tail else ""), mark


def snapshot_index(training_seconds: float, every_minutes: float) -> int:
    """The last mark the clock has reached: snapshot i is due once training_seconds >= i * every_minutes minutes."""
    return math.floor(training_seconds / (60 * every_minutes))


def save_snapshot(snapshot: Snapshot, state: dict[str, torch.Tensor]) -> Path:
    """Write the weights ``state`` as ``snapshot.path``, atomically: a reader sees all of it or none."""
    path = snapshot.path
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = snapshot.metadata()
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))
    return path


def read_snapshot(path: Path) -> Snapshot:
    """The snapshot's description from its metadata, checked field by field (its tensors are not read)."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except FileNotFoundError:
        raise VaelabError(f"{path} does not exist") from None
    except Exception as err:  # safetensors raises its own types for a damaged header
        raise VaelabError(f"{path} is not a readable safetensors file ({' '.join(str(err).split())[:200]})") from None
    if meta.get("format") != FORMAT:
        raise VaelabError(f'{path} is not a vaelab snapshot (no "format": "{FORMAT}" in its metadata)')

    def number(key: str, kind: type) -> float | int:
        try:
            value = kind(meta.get(key, ""))
        except ValueError:
            value = None
        if value is None or not (math.isfinite(value) and value >= 0):
            raise VaelabError(f"{path}: {key} must be a finite number >= 0, got {meta.get(key)!r}")
        return value

    snapshot = Snapshot(
        path=path,
        training_seconds=float(number("training_seconds", float)),
        mark_minutes=str(meta.get("mark_minutes", "")),
        epoch=int(number("epoch", int)),
        step=int(number("step", int)),
        steps_per_epoch=int(number("steps_per_epoch", int)),
        weights=str(meta.get("weights", "")),
    )
    if snapshot.epoch < 1 or snapshot.steps_per_epoch < 1 or snapshot.step > snapshot.steps_per_epoch:
        raise VaelabError(
            f"{path}: epoch {snapshot.epoch}, step {snapshot.step} of {snapshot.steps_per_epoch} is no place in a run"
        )
    return snapshot


def snapshot_files(run: RunDir) -> list[Path]:
    """The run's snapshot files by name (none without a snapshots folder); a link out of the run is refused."""
    folder = run.own(SNAPSHOTS)
    if not folder.is_dir():
        return []
    return sorted(run.own(Path(SNAPSHOTS) / path.name) for path in folder.glob(PATTERN))


def list_snapshots(run: RunDir) -> list[Snapshot]:
    """The run's snapshots in the order they were taken."""
    return sorted((read_snapshot(path) for path in snapshot_files(run)), key=lambda s: (s.training_seconds, s.name))


def load_snapshot_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as err:
        raise VaelabError(f"{path} is not a readable safetensors file ({' '.join(str(err).split())[:200]})") from None


__all__ = [
    "FORMAT",
    "Snapshot",
    "list_snapshots",
    "load_snapshot_weights",
    "mark_name",
    "read_snapshot",
    "save_snapshot",
    "snapshot_files",
    "snapshot_index",
]
