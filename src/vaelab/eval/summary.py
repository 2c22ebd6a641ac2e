"""Everything ``vaelab eval`` reports about one model, as one flat dict, and how it lands in a run directory.

:func:`evaluate_model` computes, on the test split of the run's config:

* ``total`` / ``reconstruction`` / ``kl`` (per image, nats) and ``kl_per_dim`` (where the KL factorises);
* ``active_units`` and ``latent_variance`` (Cov_x(E_q[z_j]) per dimension), ``posterior_collapse``
  (bool) with ``posterior_collapse_reason``;
* ``knn5_accuracy`` (fit on all ``knn_train_images`` training latent means), ``logistic_accuracy``
  (fit on the first ``probe_train_images`` <= 10,000 of them), ``silhouette`` (test latent means by class);
* ``frechet_distance`` between ``frechet_samples`` prior samples and the test images in the feature space
  of vaelab's classifier of the data set (NOT comparable with Inception-based FID; ``frechet_note`` says so),
  or ``None`` with ``frechet_note`` giving the reason when vaelab has no classifier of the data set;
* for a conditional model (``model.takes_labels``) of 10 classes on such a data set, ``label_accuracy`` (and per class): the share of
  ``frechet_samples`` samples, decoded under the labels in turn, that the same classifier assigns to their label;
* for a model with a discrete latent (``model.can("discrete_code")``), ``cluster_accuracy``: its most probable
  category against the test labels under the best one-to-one matching (Hungarian);
* ``analysis_seconds``.

:func:`analysis_record` turns it into the ``metrics.jsonl`` record ``{"epoch": E, "split": "test",
"kind": "analysis", ...}``. It keeps ``split == "test"`` and carries the test ELBO terms, so readers that
take the last test record (report, loss curves, ``vaelab reproduce``) read the same numbers as from the
trainer's own test record; a resumed run keeps it (its ``epoch`` is the ``epochs_trained`` of the model it
describes) and drops the trainer's test record (the model changes).
:func:`write_evaluation_section` puts an "## Evaluation" section into ``report.md`` (replacing an
earlier one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.data import Batches, ImageDataset
from vaelab.errors import VaelabError
from vaelab.eval.analysis import (
    ACTIVE_UNIT_THRESHOLD,
    COLLAPSE_KL_THRESHOLD,
    PROBE_TRAIN_LIMIT,
    active_units,
    knn_accuracy,
    latent_means,
    logistic_probe_accuracy,
    posterior_collapse,
    silhouette,
)
from vaelab.eval.bound import evaluate_elbo
from vaelab.eval.clustering import best_match_accuracy, discrete_codes
from vaelab.eval.conditional import label_accuracy
from vaelab.eval.frechet import sample_frechet_distance
from vaelab.io import atomic_write_text
from vaelab.model.base import LatentVariableModel
from vaelab.model.codebook import usage_summary
from vaelab.runs import RunDir

FRECHET_SAMPLES = 10_000
KNN_K = 5
SECTION = "## Evaluation"


def frechet_applicable(dataset: ImageDataset) -> str | None:
    """None if the Fréchet distance (and the label accuracy) can be computed for ``dataset``, else the
    reason it cannot: it needs vaelab's classifier of that data set."""
    from vaelab.eval.classifier import CLASSIFIERS, IMAGE_SHAPE

    if dataset.name not in CLASSIFIERS:
        return (
            f"not computed: the Fréchet distance uses the features of a classifier of the data set, and vaelab has "
            f"none for {dataset.name!r} (only for {', '.join(CLASSIFIERS)})"
        )
    if tuple(dataset.image_shape) != IMAGE_SHAPE:
        return f"not computed: the {dataset.name} classifier takes 1 x 28 x 28 images, not {dataset.image_shape}"
    return None


def evaluate_model(
    model: LatentVariableModel,
    dataset: ImageDataset,
    train: Batches,
    test: Batches,
    seed: int = 0,
    frechet_samples: int = FRECHET_SAMPLES,
    probe_limit: int = PROBE_TRAIN_LIMIT,
    classifier=None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The test-set bound and all analysis metrics of ``model`` (see the module docstring); ``say``
    gets one line as each stage starts (what runs, the seconds so far).

    ``train`` and ``test`` are the run's splits (as :func:`vaelab.train.make_batches` makes them);
    the training images are re-wrapped with a fixed binarisation, so the probes are deterministic.
    A metric that the (``--limit``ed) test set is too small for is ``None``; the result holds no NaN.
    """
    started = time.perf_counter()

    def stage(what: str) -> None:
        if say is not None:
            say(f"eval: {what} [{time.perf_counter() - started:.0f} s]")

    stage(f"the bound on {len(test.images):,} test images")
    result: dict[str, Any] = dict(evaluate_elbo(model, test, seed=seed))
    _require_finite_bound(result)
    train_fixed = Batches(train.images, train.labels, test.batch_size, _binarize_of(train), training=False)
    stage(f"posterior means of {len(train.images):,} training and {len(test.images):,} test images")
    train_means, test_means = latent_means(model, train_fixed), latent_means(model, test)
    n_test, n_train = len(test_means), len(train_means)
    active, variances = active_units(test_means) if n_test >= 2 else (None, None)
    collapsed = posterior_collapse(
        active if active is not None else model.latent_dim, result.get("kl_per_dim"), result["kl"], model.latent_dim
    )
    probe_images = min(n_train, probe_limit) if probe_limit else n_train
    test_classes = len(torch.unique(test.labels))
    stage("kNN and logistic-regression probes, silhouette")
    result.update(
        {
            "active_units": active,
            "latent_dim": model.latent_dim,
            "latent_variance": variances,
            "posterior_collapse": collapsed,
            "posterior_collapse_reason": _collapse_reason(collapsed, active),
            f"knn{KNN_K}_accuracy": (
                knn_accuracy(train_means, train.labels, test_means, test.labels, KNN_K) if n_train >= KNN_K else None
            ),
            "knn_train_images": n_train,
            "logistic_accuracy": (
                logistic_probe_accuracy(train_means, train.labels, test_means, test.labels, probe_limit)
                if len(torch.unique(train.labels[:probe_images])) >= 2
                else None
            ),
            "probe_train_images": probe_images,
            # sklearn's silhouette needs 2 <= classes <= images - 1
            "silhouette": silhouette(test_means, test.labels) if 2 <= test_classes < n_test else None,
        }
    )
    reason = frechet_applicable(dataset)
    if reason is None and n_test < 2:
        reason = "not computed: a covariance needs at least 2 test images"
    if reason is None:
        stage(f"Fréchet distance of {frechet_samples:,} prior samples")
        # the test split's grey-level images (the split is the first images of the test set)
        reference = dataset.x_test[:n_test]
        result.update(
            sample_frechet_distance(model, reference, frechet_samples, seed, classifier, dataset=dataset.name)
        )
    else:
        result.update(
            {"frechet_distance": None, "frechet_samples": 0, "frechet_reference_images": 0, "frechet_note": reason}
        )
    if model.takes_labels:  # its samples under each label, read back by the data set's classifier
        if frechet_applicable(dataset) is None and model.classes == 10:
            stage(f"label accuracy of {frechet_samples:,} conditional samples")
            result.update(label_accuracy(model, frechet_samples, seed, classifier, dataset=dataset.name))
        else:
            result.update(
                {
                    "label_accuracy": None,
                    "label_accuracy_note": f"not computed: it reads samples with a 10-class classifier of the data "
                    f"set, which vaelab has not for {model.classes} classes of {dataset.name!r}",
                }
            )
    if model.can("discrete_code"):  # a discrete latent: how well its categories match the classes
        result["cluster_accuracy"] = best_match_accuracy(discrete_codes(model, test), test.labels)
    if model.can("code_usage"):  # a quantised code: how much of its codebook the test set uses
        result.update(code_usage_analysis(model, test))
    if model.can("layer_means") and n_test >= 2:  # several stochastic layers: each one's KL, units, collapse
        result["layers"] = layer_analysis(model, test, result.get("kl_per_dim"))
    result["analysis_seconds"] = round(time.perf_counter() - started, 2)
    return result


@torch.no_grad()
def code_usage_analysis(model: LatentVariableModel, test: Batches) -> dict[str, Any]:
    """The test set's codebook usage: perplexity, codes used (number, fraction), over every grid position."""
    model.eval()
    counts = sum(model.code_usage(x).cpu() for x in test.epoch(shuffle=False))
    return usage_summary(counts)


@torch.no_grad()
def layer_analysis(model: LatentVariableModel, test: Batches, kl_per_dim: list[float] | None) -> list[dict[str, Any]]:
    """Per stochastic layer (1 = next to x): its size, KL (nats per image), active units and collapse."""
    model.eval()
    per_layer = [torch.cat(parts) for parts in zip(*(model.layer_means(x) for x in test.epoch(shuffle=False)))]
    sizes = [means.shape[-1] for means in per_layer]
    kls = np.split(np.asarray(kl_per_dim), np.cumsum(sizes)[:-1]) if kl_per_dim is not None else [None] * len(sizes)
    layers = []
    for i, (means, kl) in enumerate(zip(per_layer, kls)):
        active, _ = active_units(means)
        collapsed = posterior_collapse(active, None if kl is None else kl.tolist(), latent_dim=len(means[0]))
        layers.append(
            {
                "layer": i + 1,
                "size": sizes[i],
                "kl": None if kl is None else float(kl.sum()),
                "active_units": active,
                "posterior_collapse": collapsed,
            }
        )
    return layers


def _require_finite_bound(bound: dict[str, Any]) -> None:
    """A table of NaN is no evaluation: say which numbers overflowed, before the slower analyses run."""
    bad = [key for key, value in bound.items() if not np.all(np.isfinite(value))]
    if bad:
        raise VaelabError(
            f"the model's test-set {', '.join(bad)} came out NaN or inf: its weights are finite, but it overflows "
            "on these images (huge weights, or a tiny model.likelihood_scale); evaluate it on the data it was "
            "trained on, or retrain it with a lower train.lr"
        )


def _binarize_of(batches: Batches) -> str:
    # Batches keeps its images binarised already for "static"; "dynamic" training batches are raw images
    # binarised per batch, which the fixed-seed evaluation binarisation replaces
    return "dynamic" if batches.binarize_each_batch else "none"


def _collapse_reason(collapsed: bool, active: int | None) -> str | None:
    if not collapsed:
        return None
    if active == 0:
        return (
            f"no active unit (every Cov_x(E_q[z_j]) <= {ACTIVE_UNIT_THRESHOLD}): the posterior means hardly "
            "depend on the image, so the latent code carries almost no information about it"
        )
    return f"every latent dimension's KL is below {COLLAPSE_KL_THRESHOLD} nats: q(z|x) ~= p(z) for every image"


def analysis_record(result: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The ``metrics.jsonl`` record of one evaluation (the result without the model's name)."""
    body = {key: value for key, value in result.items() if key not in ("model", "split", "epoch", "kind")}
    return {"epoch": epoch, "split": "test", "kind": "analysis", **body}


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Add ``record`` to the run's ``metrics.jsonl``, as its writer (refused while another process writes the run)."""
    with RunDir(run_dir).writing() as run:
        run.append(record)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _fixed(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


COLLAPSE_WARNING = "WARNING: posterior collapse"


def analysis_lines(result: dict[str, Any]) -> list[str]:
    """One plain-text line per analysis result (everything but the ELBO table), for the terminal and report.md.

    The collapse warning, when there is one, is the line starting with ``COLLAPSE_WARNING``.
    """
    lines = []
    if "kl_per_dim" in result:
        lines.append("KL per latent dimension: " + ", ".join(f"{v:.2f}" for v in result["kl_per_dim"]))
    if result["active_units"] is None:
        lines.append("active units: n/a (fewer than 2 test images)")
    else:
        lines.append(
            f"active units: {result['active_units']} of {result['latent_dim']} "
            f"(Cov_x(E_q[z_j]) > {ACTIVE_UNIT_THRESHOLD}; per dimension: "
            + ", ".join(f"{v:.3g}" for v in result["latent_variance"])
            + ")"
        )
    if result["posterior_collapse"]:
        lines.append(f"{COLLAPSE_WARNING}: {result['posterior_collapse_reason']}")
    else:
        lines.append("posterior collapse: no")
    for layer in result.get("layers", []):
        kl = "" if layer["kl"] is None else f"KL {layer['kl']:.2f} nats, "
        line = f"layer {layer['layer']} ({layer['size']} units): {kl}{layer['active_units']} active"
        if layer["posterior_collapse"]:
            line = f"{COLLAPSE_WARNING} in layer {layer['layer']}: {line}"
        lines.append(line)
    lines += [
        f"kNN (k = {KNN_K}) probe accuracy on the latent means: {_pct(result[f'knn{KNN_K}_accuracy'])} "
        f"(fit on {result['knn_train_images']} training images)",
        f"logistic-regression probe accuracy on the latent means: {_pct(result['logistic_accuracy'])} "
        f"(fit on the first {result['probe_train_images']} training images)",
        f"silhouette of the test latent means by class: {_fixed(result['silhouette'])}",
    ]
    if result["frechet_distance"] is None:
        lines.append(f"Fréchet distance: {result['frechet_note']}")
    else:
        lines.append(
            f"Fréchet distance, {result['frechet_samples']} prior samples vs {result['frechet_reference_images']} "
            f"test images: {result['frechet_distance']:.3f} ({result['frechet_note']})"
        )
    if "code_perplexity" in result:
        lines.append(
            f"codebook usage over the test set: {result['codes_used']} of {result['codebook_size']} codes used "
            f"({_pct(result['codes_used_fraction'])}), perplexity {result['code_perplexity']:.1f}"
        )
    if "cluster_accuracy" in result:
        lines.append(
            f"unsupervised accuracy of the discrete code: {_pct(result['cluster_accuracy'])} "
            "(its most probable category against the labels, best one-to-one matching)"
        )
    if "label_accuracy" in result:
        if result["label_accuracy"] is None:
            lines.append(f"label accuracy of conditional samples: {result['label_accuracy_note']}")
        else:
            lines.append(
                f"label accuracy of conditional samples: {_pct(result['label_accuracy'])} of "
                f"{result['label_samples']} samples (the labels in turn) classified as their label by vaelab's "
                "classifier of the data set; per class: "
                + ", ".join(_pct(v) for v in result["label_accuracy_per_class"])
            )
    return lines


def evaluation_lines(result: dict[str, Any]) -> list[str]:
    """The Markdown "## Evaluation" section for one evaluation result."""
    nll = "nll" in result
    lines = [
        SECTION,
        "",
        f"`vaelab eval` on the {result['dataset']} test set ({result['images']} images, noise seed {result['seed']}), "
        "per image in nats:",
        "",
        "| total (-ELBO) | reconstruction | KL |" + (" NLL (IWAE-k) |" if nll else ""),
        "|---|---|---|" + ("---|" if nll else ""),
        f"| {result['total']:.2f} | {result['reconstruction']:.2f} | {result['kl']:.2f} |"
        + (f" {result['nll']:.2f} ± {_fixed(result.get('nll_stderr'), 2)} (k = {result['k']}) |" if nll else ""),
        "",
    ]
    if "likelihood_note" in result:
        lines += [f"**The NLL is {result['likelihood_note']}.**", ""]
    for line in analysis_lines(result):
        if line.startswith(COLLAPSE_WARNING):
            line = f"**{COLLAPSE_WARNING}**{line[len(COLLAPSE_WARNING) :]}"
        lines.append(f"- {line}")
    return lines


def write_evaluation_section(report: Path, result: dict[str, Any]) -> None:
    """Put the "## Evaluation" section into ``report`` (Markdown), replacing an earlier one, else appending."""
    replace_section(report, SECTION, evaluation_lines(result))


def replace_section(report: Path, heading: str, section_lines: list[str]) -> None:
    """Put ``section_lines`` (starting with the line ``heading``) into the Markdown ``report`` in place of an
    earlier section under that heading, else at the end."""
    report = Path(report)
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    section = "\n".join(section_lines) + "\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        body = text.rstrip("\n")
        new = (body + "\n\n" if body else "") + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        after = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + after if after else "")
    atomic_write_text(report, new)


__all__ = [
    "COLLAPSE_WARNING",
    "FRECHET_SAMPLES",
    "analysis_lines",
    "analysis_record",
    "append_record",
    "evaluate_model",
    "evaluation_lines",
    "frechet_applicable",
    "replace_section",
    "write_evaluation_section",
]
