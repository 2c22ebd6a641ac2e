"""``vaelab eval RUN --snapshots``: a run's snapshots and its final model evaluated against training time, as the
test NLL or (``--disentanglement``) as the five disentanglement metrics.

The points go to the run's ``metrics.jsonl`` (``"kind": "nll_curve"`` or ``"disentanglement_curve"``,
:mod:`vaelab.eval.curve`), the figure to ``figures/`` and a section to ``report.md``; ``vaelab reproduce`` does the
same for an experiment that declares ``nll_curve``. A run still training (no ``model.json`` yet) can be read with
``write=False``: its snapshots are evaluated with the model its ``config.toml`` builds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from vaelab.config import RunConfig
from vaelab.errors import VaelabError
from vaelab.eval.bound import evaluation_seed
from vaelab.eval.curve import (
    SECTION,
    CurveWeights,
    Measure,
    curve_record,
    curve_section,
    evaluate_weights,
    final_weights,
    nll_measure,
    point_identity,
)
from vaelab.eval.disentanglement import DEFAULT_POINTS, METRIC_LABELS, Sizes
from vaelab.eval.factor_eval import (
    CURVE_SECTION,
    disentanglement_curve_section,
    disentanglement_measure,
    require_factors,
)
from vaelab.eval.summary import replace_section
from vaelab.model import build_model, load_model
from vaelab.runs import RunDir
from vaelab.runs.rundir import CONFIG, MODEL, MODEL_JSON
from vaelab.runs.snapshots import list_snapshots
from vaelab.train import make_batches
from vaelab.train.trainer import run_dataset

FIGURE = "nll_vs_minutes.png"
DISENTANGLEMENT_FIGURE = "disentanglement_vs_minutes.png"


class _Curve:
    """A run opened for a curve: its records, config, the model (built from the config while it still trains) and
    the weights to evaluate (its snapshots, then its final model)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.records = run.records()  # a log it cannot append to is refused before the evaluation
        if run.own(MODEL_JSON).is_file():
            self.model, self.config, meta = load_model(run.path)
        else:
            self.model, self.config, meta = None, RunConfig.load(run.config), None
        self.weights = [CurveWeights.of_snapshot(s) for s in list_snapshots(run)]
        if meta is not None:
            self.weights.append(final_weights(run.own(MODEL), meta, self.records))
        if not self.weights:
            raise VaelabError(
                f"{run.path} has no snapshots (train.snapshot_minutes) and no final model: nothing to evaluate"
            )

    def model_for(self, image_shape: tuple[int, ...]):
        return self.model if self.model is not None else build_model(self.config.model, image_shape).eval()

    def evaluate(self, model, measure: Measure, say: Callable[[str], None], write: bool) -> list[dict[str, Any]]:
        """The points; with ``write``, those not yet in the run's log appended to it."""
        points = [point for point, _ in evaluate_weights(model, self.weights, measure, self.records, say)]
        if write:
            logged = {point_identity(r, measure, named=True) for r in self.records if r.get("kind") == measure.kind}
            new = [
                curve_record(p, measure.kind) for p in points if point_identity(p, measure, named=True) not in logged
            ]
            if new:
                self.run.append(*new)
        return points


@contextmanager
def _opened(run_dir: Path, write: bool) -> Iterator[_Curve]:
    run = RunDir(run_dir)
    if not run.own(CONFIG).is_file():
        raise VaelabError(f"{run_dir} is not a vaelab run directory (no config.toml)")
    with run.writing() if write else nullcontext():
        yield _Curve(run)


def nll_curve(
    run_dir: Path,
    k: int = 5000,
    limit: int = 0,
    seed: int | None = None,
    write: bool = True,
    figure_format: Any = None,
    reference: tuple[str, float] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """The IWAE-k NLL of each snapshot of ``run_dir`` and of its final model on its first ``limit`` test images
    (0: all), with ``seed`` (default: what ``vaelab eval --nll`` uses). ``write``: as the run's writer, append the
    points not yet in its log, draw the figure (``reference``: a (label, nats) line) and the report's section."""
    with _opened(run_dir, write) as curve:
        config = curve.config
        if limit:
            config.data.test_limit = limit  # the first N images, binarised exactly as in the full test set
        dataset, batches = make_batches(config)
        seed = evaluation_seed(config.train.seed) if seed is None else seed
        model = curve.model_for(dataset.image_shape)
        points = curve.evaluate(model, nll_measure(batches["test"], k, seed, say), say, write)
        figure = None
        if write:
            from vaelab.viz import nll_against_minutes

            figure = _draw(curve.run, nll_against_minutes(points, reference), FIGURE, figure_format)
            replace_section(curve.run.report, SECTION, curve_section(points, figure, reference))
    return {
        "run": str(run_dir),
        "k": k,
        "images": len(batches["test"].images),
        "seed": seed,
        "reference": None if reference is None else {"label": reference[0], "nll": reference[1]},
        "points": points,
        "figure": figure,
    }


def disentanglement_curve(
    run_dir: Path,
    points: int = DEFAULT_POINTS,
    seed: int | None = None,
    write: bool = True,
    figure_format: Any = None,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """BetaVAE, FactorVAE, MIG, SAP and DCI of the posterior means of each snapshot of ``run_dir`` and of its final
    model, as ``vaelab eval --disentanglement`` computes them (``points``: its ``--metric-points``; ``seed``:
    default the run's). ``write``: as the run's writer, append the points not yet in its log, draw the figure and
    the report's section."""
    with _opened(run_dir, write) as curve:
        dataset = run_dataset(curve.config)
        model = curve.model_for(dataset.image_shape)
        require_factors(dataset, model)
        seed = curve.config.train.seed if seed is None else seed
        measure = disentanglement_measure(dataset, seed, Sizes.points(points))
        evaluated = curve.evaluate(model, measure, say, write)
        figure = None
        if write:
            from vaelab.viz import metrics_against_minutes

            drawn = metrics_against_minutes(evaluated, METRIC_LABELS)
            figure = _draw(curve.run, drawn, DISENTANGLEMENT_FIGURE, figure_format)
            replace_section(curve.run.report, CURVE_SECTION, disentanglement_curve_section(evaluated, figure))
    return {
        "run": str(run_dir),
        "dataset": dataset.name,
        "seed": seed,
        "metric_sizes": measure.settings["metric_sizes"],
        "points": evaluated,
        "figure": figure,
    }


def _draw(run: RunDir, figure: Any, name: str, figure_format: Any) -> str:
    """The figure into the run's figures folder; its path relative to the run."""
    from vaelab.viz import FigureFormat, save_figure

    fmt = figure_format or FigureFormat()
    path = save_figure(figure, run.figures / fmt.file_name(name), dpi=fmt.dpi)
    return f"figures/{path.name}"


__all__ = ["DISENTANGLEMENT_FIGURE", "FIGURE", "disentanglement_curve", "nll_curve"]
