"""A run's snapshots and its final model evaluated against training time (``vaelab eval --snapshots``).

:func:`evaluate_weights` loads each set of weights into the model and applies a :class:`Measure`: the test NLL
(:func:`nll_measure`, this module) or the disentanglement metrics (``vaelab.eval.factor_eval``). A point:
``snapshot`` (the snapshot's name, or ``final``), ``training_minutes`` (the clock ``train.minutes`` counts),
``epochs`` (trained, as a fraction where a snapshot fell inside an epoch), the measure's settings and results (the
NLL's: ``nll`` and ``nll_stderr`` (IWAE-k, as ``vaelab eval --nll`` estimates it, with its seed), ``bits_per_dim``,
``k``, ``images``, ``seed``) and ``weights_sha256`` (of the tensors). :func:`curve_record` makes it a
``metrics.jsonl`` record ``{"epoch": E, "split": "curve", "kind": KIND, ...}``, E the epochs completed: a split
of its own, so that readers of the last test record never take a point for it. Weights already measured with the
same settings (in the log, or earlier in the same call: a final model equal to the last snapshot) are not
measured again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaelab.data import Batches
from vaelab.eval.nll import REPORTED_KEYS, estimate_log_likelihood
from vaelab.io import markdown_figure
from vaelab.model.store import check_state
from vaelab.runs.snapshots import Snapshot, load_snapshot_weights

KIND = "nll_curve"
SPLIT = "curve"
SECTION = "## Test NLL against training time"
PROGRESS_SECONDS = 30.0  # a progress line inside one evaluation at most this often
_ESTIMATE_KEYS = tuple(key for key in REPORTED_KEYS if key != "k")  # a point names the k it asked for


@dataclass(frozen=True)
class CurveWeights:
    """One set of weights on the curve: a snapshot, or the run's final model."""

    name: str
    path: Path
    training_seconds: float
    epochs: float
    epochs_completed: int

    @classmethod
    def of_snapshot(cls, snapshot: Snapshot) -> CurveWeights:
        return cls(
            snapshot.name,
            snapshot.path,
            snapshot.training_seconds,
            snapshot.epoch_fraction,
            snapshot.epochs_completed,
        )


def final_weights(path: Path, meta: dict[str, Any], records: list[dict[str, Any]]) -> CurveWeights:
    """The final model (``model.safetensors``) as a point: the training time of the epochs its weights are from
    (``train.keep_best``: the kept epoch's), the last as the fraction trained where ``train.minutes`` ended it."""
    epochs = int(meta.get("kept_epoch", meta.get("epochs_trained", 0)))
    train = [r for r in records if r["split"] == "train" and "kind" not in r and r["epoch"] <= epochs]
    seconds = sum(r.get("seconds", 0.0) for r in train)
    fraction = next((r.get("fraction_trained", 1.0) for r in reversed(train) if r["epoch"] == epochs), 1.0)
    return CurveWeights("final", path, float(seconds), epochs - 1 + fraction, epochs - (fraction < 1.0))


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors (name, dtype, shape, bytes): equal for equal weights, whatever file holds them."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def curve_record(point: dict[str, Any], kind: str = KIND) -> dict[str, Any]:
    body = {key: value for key, value in point.items() if key not in ("epoch", "split", "kind")}
    return {"epoch": int(point["epochs_completed"]), "split": SPLIT, "kind": kind, **body}


@dataclass(frozen=True)
class Measure:
    """What a curve measures of each set of weights: the test NLL, or the disentanglement metrics."""

    kind: str  # the records' "kind"
    settings: dict[str, Any]  # with the weights, what names a point: an earlier one with the same is reused
    keys: tuple[str, ...]  # the results an earlier point of the same weights and settings lends
    measure: Callable[[torch.nn.Module], dict[str, Any]]  # the model (these weights loaded) -> the results
    doing: str  # the progress line before one evaluation
    text: Callable[[dict[str, Any]], str]  # a point's results in one line
    seconds_key: str  # where a point evaluated in this call keeps its seconds


def evaluate_weights(
    model: torch.nn.Module,
    weights: list[CurveWeights],
    measure: Measure,
    earlier: list[dict[str, Any]] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> list[tuple[dict[str, Any], bool]]:
    """(point, new) for each of ``weights`` in order: the model with those weights, ``measure``d; ``new`` where it
    was evaluated in this call rather than read from ``earlier`` records of the same weights and settings."""
    known = {point_identity(r, measure): r for r in earlier or [] if r.get("kind") == measure.kind}
    out = []
    for number, item in enumerate(weights, 1):
        state = load_snapshot_weights(item.path)
        check_state(model, state, str(item.path))
        fingerprint = weights_fingerprint(state)
        where = (
            f"[{number}/{len(weights)}] {item.name}: {item.training_seconds / 60:.2f} training minutes, "
            f"{item.epochs:.2f} epochs"
        )
        point = {
            "snapshot": item.name,
            "training_minutes": item.training_seconds / 60,
            "training_seconds": item.training_seconds,
            "epochs": item.epochs,
            "epochs_completed": item.epochs_completed,
            **measure.settings,
            "weights_sha256": fingerprint,
        }
        identity = point_identity(point, measure)
        before = known.get(identity)
        if before is not None:
            point.update({key: before[key] for key in measure.keys if key in before})
            say(f"{where}: {measure.text(point)} (evaluated before, the same weights)")
            out.append((point, False))
            continue
        say(f"{where}: {measure.doing}")
        model.load_state_dict(state, strict=True)
        started = time.perf_counter()
        point.update(measure.measure(model))
        point[measure.seconds_key] = time.perf_counter() - started
        say(f"  {measure.text(point)} [{point[measure.seconds_key]:.1f} s]")
        known[identity] = point
        out.append((point, True))
    return out


def point_identity(point: dict[str, Any], measure: Measure, named: bool = False) -> str:
    """A point's weights and settings (``named``: and its snapshot's name) as one comparable string."""
    name = [point.get("snapshot")] if named else []
    return json.dumps(
        [*name, point.get("weights_sha256"), {key: point.get(key) for key in measure.settings}], sort_keys=True
    )


def nll_measure(test: Batches, k: int, seed: int, say: Callable[[str], None] = lambda line: None) -> Measure:
    """The IWAE-k NLL on ``test``, as ``vaelab eval --nll`` estimates it with ``seed``."""
    images = len(test.images)

    def measure(model: torch.nn.Module) -> dict[str, Any]:
        estimate = estimate_log_likelihood(model, test, k=k, seed=seed, progress=_progress_lines(images, say))
        result = {key: estimate[key] for key in _ESTIMATE_KEYS if key in estimate}
        if not math.isfinite(result["nll_stderr"]):  # NaN for a single image: JSON has no NaN
            result["nll_stderr"] = None
        return result

    return Measure(
        KIND,
        {"k": k, "images": images, "seed": seed},
        _ESTIMATE_KEYS,
        measure,
        f"NLL, k = {k}, on {images:,} test images",
        lambda point: f"NLL {_nll_text(point)}",
        "nll_seconds",
    )


def evaluate_curve(
    model: torch.nn.Module,
    weights: list[CurveWeights],
    test: Batches,
    k: int,
    seed: int,
    earlier: list[dict[str, Any]] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> list[tuple[dict[str, Any], bool]]:
    """:func:`evaluate_weights` with :func:`nll_measure`: the IWAE-k NLL of each of ``weights`` on ``test``."""
    return evaluate_weights(model, weights, nll_measure(test, k, seed, say), earlier, say)


def _progress_lines(images: int, say: Callable[[str], None]) -> Callable[[int], None]:
    """A progress callback for one evaluation: a line at most every PROGRESS_SECONDS."""
    started = last = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= PROGRESS_SECONDS and done < images:
            last = now
            say(f"  {done:,}/{images:,} images ({done / (now - started):.2f} images/s)")

    return progress


def _nll_text(point: dict[str, Any]) -> str:
    stderr = point.get("nll_stderr")
    return f"{point['nll']:.2f}" + ("" if stderr is None else f" ± {stderr:.2f}")


def curve_section(points: list[dict[str, Any]], figure: str | None, reference: tuple[str, float] | None) -> list[str]:
    """The report's section: one row per point, the figure, and the reference number where there is one."""
    first = points[0]
    how = first.get("nll_note") or f"IWAE, k = {first['k']}"
    lines = [
        SECTION,
        "",
        f"`vaelab eval --snapshots`: the test NLL ({how}; {first['images']:,} test images, seed {first['seed']}; "
        "± one standard error over images) of the weights saved every `train.snapshot_minutes` of training time and "
        "of the final model, nats per image."
        + (f" **It is {first['likelihood_note']}.**" if "likelihood_note" in first else ""),
        "",
        "| weights | training minutes | epochs | NLL |",
        "|---|---|---|---|",
    ]
    lines += [f"| {p['snapshot']} | {p['training_minutes']:.2f} | {p['epochs']:.2f} | {_nll_text(p)} |" for p in points]
    best = min(points, key=lambda p: p["nll"])
    lines += ["", f"Best: {best['snapshot']}, {_nll_text(best)} nats after {best['training_minutes']:.2f} minutes."]
    if reference is not None:
        lines[-1] += f" {reference[0]}: {reference[1]:.2f} ({best['nll'] - reference[1]:+.2f} nats)."
    if figure:
        lines += ["", markdown_figure(Path(figure).stem, figure)]
    return lines


__all__ = [
    "KIND",
    "SECTION",
    "SPLIT",
    "CurveWeights",
    "Measure",
    "curve_record",
    "curve_section",
    "evaluate_curve",
    "evaluate_weights",
    "final_weights",
    "nll_measure",
    "point_identity",
    "weights_fingerprint",
]
