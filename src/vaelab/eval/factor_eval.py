"""``vaelab eval --disentanglement``: the five disentanglement metrics of a model on a data set with factors.

The representation is the posterior mean ``model.encode(x)`` (disentanglement_lib's "mean"
representation), computed on images drawn from the data set's factor table
(:class:`vaelab.data.FactorImages`), train and test images alike, as disentanglement_lib samples its
ground-truth data. The metrics themselves are :mod:`vaelab.eval.disentanglement`.

:func:`disentanglement_record` makes the ``metrics.jsonl`` record ``{"epoch": E, "split": "factors",
"kind": "disentanglement", ...}``; :func:`write_disentanglement_section` the report's "## Disentanglement".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.data import ImageDataset, to_unit_float
from vaelab.errors import VaelabError
from vaelab.eval.curve import Measure
from vaelab.eval.disentanglement import (
    METRIC_LABELS,
    METRICS,
    Sizes,
    all_metrics,
    entropy,
    mutual_information,
    sample_codes,
)
from vaelab.eval.summary import replace_section
from vaelab.io import markdown_figure
from vaelab.model.base import LatentVariableModel

SECTION = "## Disentanglement"
CURVE_KIND = "disentanglement_curve"
CURVE_SECTION = "## Disentanglement against training time"
ENCODE_BATCH = 1024
FIGURE_CODES = 10_000  # samples behind the mutual-information figures of `vaelab plot`


def require_factors(dataset: ImageDataset, model: LatentVariableModel) -> None:
    """Refuse, in one line, a data set without ground-truth factors or a model without a plain encoder."""
    if dataset.ground_truth is None:
        raise VaelabError(
            f"the data set {dataset.name!r} has no ground-truth factors: --disentanglement needs one made from "
            "known factors (dsprites, dsprites-small, dsprites-colour; `vaelab datasets`)"
        )
    if not model.can("encode"):
        raise VaelabError(f"the {model.family} model family has no encoder: the metrics are about its codes")
    if model.takes_labels:
        raise VaelabError(
            f"the {model.family} model family encodes an image together with its label; the metrics take "
            "a code of the image alone"
        )


def representation(model: LatentVariableModel, batch: int = ENCODE_BATCH):
    """Observations (uint8 images) -> posterior means (N x d numpy), in batches, without gradients."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def represent(images: torch.Tensor) -> np.ndarray:
        model.eval()
        parts = [
            model.encode(to_unit_float(images[i : i + batch]).to(device)).double().cpu()
            for i in range(0, len(images), batch)
        ]
        return torch.cat(parts).numpy()

    return represent


def evaluate_disentanglement(
    model: LatentVariableModel, dataset: ImageDataset, seed: int = 0, sizes: Sizes | None = None
) -> dict[str, Any]:
    """BetaVAE, FactorVAE, MIG, SAP and DCI of ``model``'s posterior means on ``dataset``'s factors.

    Numbers are plain floats and lists (JSON as they are); ``mutual_information`` is d x K in nats,
    ``factor_entropy`` K; ``metric_seconds`` times each metric.
    """
    require_factors(dataset, model)
    sizes = sizes or Sizes()
    truth = dataset.ground_truth
    started, timings = time.perf_counter(), {}
    metrics = all_metrics(truth, representation(model), seed=seed, sizes=sizes, timings=timings)
    return {
        "factors": list(truth.names),
        "factor_sizes": list(truth.sizes),
        "latent_dim": model.latent_dim,
        "representation": "posterior mean (encode)",
        "metric_sizes": dict(vars(sizes)),
        **{key: metrics[key] for key in METRICS},
        "beta_vae_train_accuracy": metrics["beta_vae_train_accuracy"],
        "factor_vae_train_accuracy": metrics["factor_vae_train_accuracy"],
        "factor_vae_active_dims": metrics["factor_vae_active_dims"],
        "mig_per_factor": metrics["mig_per_factor"],
        "sap_per_factor": metrics["sap_per_factor"],
        "dci_informativeness_train": metrics["dci_informativeness_train"],
        "mutual_information": metrics["mutual_information"].tolist(),
        "factor_entropy": metrics["entropy"].tolist(),
        "dci_importance": metrics["dci_importance"].tolist(),
        "metric_seconds": timings,
        "disentanglement_seconds": round(time.perf_counter() - started, 2),
    }


def normalised_information(model: LatentVariableModel, dataset: ImageDataset, seed: int = 0, n: int = FIGURE_CODES):
    """I(z_j; v_k) / H(v_k) (d x K) from ``n`` sampled codes: how much of each factor each dimension holds."""
    require_factors(dataset, model)
    codes, factors = sample_codes(dataset.ground_truth, representation(model), n, np.random.default_rng(seed))
    return mutual_information(codes, factors) / entropy(factors)


def normalised(result: dict[str, Any]) -> np.ndarray:
    """The result's mutual information divided by each factor's entropy (d x K)."""
    return np.asarray(result["mutual_information"]) / np.asarray(result["factor_entropy"])


def disentanglement_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The five metrics of an evaluation and how they were drawn: what a results.json keeps of it."""
    kept = (*METRICS, "metric_sizes", "factor_vae_active_dims", "disentanglement_seconds", "seed")
    return {key: result[key] for key in kept}


def disentanglement_record(result: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The ``metrics.jsonl`` record of one evaluation (the result without the model's name)."""
    body = {key: value for key, value in result.items() if key not in ("model", "split", "epoch", "kind")}
    return {"epoch": epoch, "split": "factors", "kind": "disentanglement", **body}


def disentanglement_lines(result: dict[str, Any]) -> list[str]:
    """One plain-text line per metric, for the terminal and report.md."""
    sizes = result["metric_sizes"]
    names = result["factors"]
    codes = f"{sizes['codes_train']} / {sizes['codes_test']} sampled codes"
    per_factor = lambda values: ", ".join(f"{n} {v:.2f}" for n, v in zip(names, values))  # noqa: E731
    return [
        f"BetaVAE score: {result['beta_vae_score']:.3f} (logistic regression; {sizes['points_train']} training / "
        f"{sizes['points_eval']} evaluation points, each {sizes['batch']} pairs)",
        f"FactorVAE score: {result['factor_vae_score']:.3f} (majority vote; {sizes['points_train']} / "
        f"{sizes['points_eval']} points of {sizes['batch']}; {result['factor_vae_active_dims']} of "
        f"{result['latent_dim']} dimensions active)",
        f"MIG: {result['mig']:.3f} ({codes}; per factor: {per_factor(result['mig_per_factor'])})",
        f"SAP: {result['sap']:.3f} ({codes}; per factor: {per_factor(result['sap_per_factor'])})",
        f"DCI: disentanglement {result['dci_disentanglement']:.3f}, completeness {result['dci_completeness']:.3f}, "
        f"informativeness {result['dci_informativeness']:.3f} (test accuracy; train "
        f"{result['dci_informativeness_train']:.3f}; {sizes['dci_train']} / {sizes['dci_test']} codes)",
    ]


def write_disentanglement_section(report: Path, result: dict[str, Any]) -> None:
    """Put the "## Disentanglement" section into ``report``, replacing an earlier one."""
    lines = [
        SECTION,
        "",
        f"`vaelab eval --disentanglement` on {result['dataset']} (factors {', '.join(result['factors'])}; "
        f"{result['representation']}; seed {result['seed']}; see docs/disentanglement.md):",
        "",
        *[f"- {line}" for line in disentanglement_lines(result)],
    ]
    replace_section(report, SECTION, lines)


CURVE_RESULT_KEYS = (  # what a curve's point keeps of evaluate_disentanglement's result (and lends when reused)
    "factors",
    "latent_dim",
    *METRICS,
    "factor_vae_active_dims",
    "mig_per_factor",
    "sap_per_factor",
    "dci_informativeness_train",
)


def disentanglement_measure(dataset: ImageDataset, seed: int, sizes: Sizes) -> Measure:
    """The five metrics of each set of weights, as :func:`evaluate_disentanglement` gives them: the measure of
    ``vaelab eval RUN --snapshots --disentanglement`` (:func:`vaelab.eval.curve.evaluate_weights`)."""

    def measure(model: torch.nn.Module) -> dict[str, Any]:
        result = evaluate_disentanglement(model, dataset, seed, sizes)
        return {**{key: result[key] for key in CURVE_RESULT_KEYS}, "metric_seconds": result["metric_seconds"]}

    return Measure(
        CURVE_KIND,
        {"dataset": dataset.name, "seed": seed, "metric_sizes": dict(vars(sizes))},
        CURVE_RESULT_KEYS,
        measure,
        f"the five disentanglement metrics on {dataset.name} (seed {seed})",
        lambda point: ", ".join(f"{label} {point[key]:.3f}" for key, label in METRIC_LABELS.items()),
        "disentanglement_seconds",
    )


def disentanglement_curve_section(points: list[dict[str, Any]], figure: str | None) -> list[str]:
    """The report's section: one row per set of weights, the five metrics, and the figure."""
    first = points[0]
    lines = [
        CURVE_SECTION,
        "",
        f"`vaelab eval --snapshots --disentanglement`: the five metrics of the posterior means on {first['dataset']} "
        f"(seed {first['seed']}, {first['metric_sizes']['points_train']:,} training points) of the weights saved every "
        "`train.snapshot_minutes` of training time and of the final model (docs/disentanglement.md).",
        "",
        "| weights | training minutes | epochs | " + " | ".join(METRIC_LABELS.values()) + " |",
        "|---|---|---|" + "---|" * len(METRIC_LABELS),
    ]
    lines += [
        f"| {p['snapshot']} | {p['training_minutes']:.2f} | {p['epochs']:.2f} | "
        + " | ".join(f"{p[key]:.3f}" for key in METRIC_LABELS)
        + " |"
        for p in points
    ]
    best = max(points, key=lambda p: p["mig"])
    lines += ["", f"Highest MIG: {best['snapshot']}, {best['mig']:.3f} after {best['training_minutes']:.2f} minutes."]
    if figure:
        lines += ["", markdown_figure(Path(figure).stem, figure)]
    return lines


__all__ = [
    "CURVE_KIND",
    "CURVE_RESULT_KEYS",
    "CURVE_SECTION",
    "disentanglement_curve_section",
    "disentanglement_measure",
    "disentanglement_lines",
    "disentanglement_record",
    "evaluate_disentanglement",
    "normalised",
    "normalised_information",
    "representation",
    "require_factors",
    "write_disentanglement_section",
]
