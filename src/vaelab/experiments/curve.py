"""``vaelab eval RUN --snapshots``: the test NLL of a run's snapshots and of its final model against training time.

The points go to the run's ``metrics.jsonl`` (``"kind": "nll_curve"``, :mod:`vaelab.eval.curve`), the figure to
``figures/nll_vs_minutes.png`` and a section to ``report.md``; ``vaelab reproduce`` does the same for an experiment
that declares ``nll_curve``. A run still training (no ``model.json`` yet) can be read with ``write=False``: its
snapshots are evaluated with the model its ``config.toml`` builds.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from vaelab.config import RunConfig
from vaelab.errors import VaelabError
from vaelab.eval.bound import evaluation_seed
from vaelab.eval.curve import SECTION, CurveWeights, curve_record, curve_section, evaluate_curve, final_weights
from vaelab.eval.summary import replace_section
from vaelab.model import build_model, load_model
from vaelab.runs import RunDir
from vaelab.runs.rundir import CONFIG, MODEL, MODEL_JSON
from vaelab.runs.snapshots import list_snapshots
from vaelab.train import make_batches

FIGURE = "nll_vs_minutes.png"


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
    run = RunDir(run_dir)
    if not run.own(CONFIG).is_file():
        raise VaelabError(f"{run_dir} is not a vaelab run directory (no config.toml)")
    with run.writing() if write else nullcontext():
        records = run.records()  # a log it cannot append to is refused before the evaluation
        if run.own(MODEL_JSON).is_file():
            model, config, meta = load_model(run.path)
        else:
            model, config, meta = None, RunConfig.load(run.config), None
        weights = [CurveWeights.of_snapshot(s) for s in list_snapshots(run)]
        if meta is not None:
            weights.append(final_weights(run.own(MODEL), meta, records))
        if not weights:
            raise VaelabError(
                f"{run_dir} has no snapshots (train.snapshot_minutes) and no final model: nothing to evaluate"
            )
        if limit:
            config.data.test_limit = limit  # the first N images, binarised exactly as in the full test set
        dataset, batches = make_batches(config)
        if model is None:
            model = build_model(config.model, dataset.image_shape).eval()
        seed = evaluation_seed(config.train.seed) if seed is None else seed
        evaluated = evaluate_curve(model, weights, batches["test"], k, seed, records, say)
        points = [point for point, _ in evaluated]
        figure = None
        if write:
            logged = {_identity(r) for r in records if r.get("kind") == "nll_curve"}
            new = [curve_record(p) for p in points if _identity(p) not in logged]
            if new:
                run.append(*new)
            figure = _draw(run, points, reference, figure_format)
            replace_section(run.report, SECTION, curve_section(points, figure, reference))
    return {
        "run": str(run_dir),
        "k": k,
        "images": len(batches["test"].images),
        "seed": seed,
        "reference": None if reference is None else {"label": reference[0], "nll": reference[1]},
        "points": points,
        "figure": figure,
    }


def _identity(point: dict[str, Any]) -> tuple:
    return tuple(point.get(key) for key in ("snapshot", "weights_sha256", "k", "images", "seed"))


def _draw(run: RunDir, points: list[dict[str, Any]], reference, figure_format) -> str:
    """The figure into the run's figures folder; its path relative to the run."""
    from vaelab.viz import FigureFormat, nll_against_minutes, save_figure

    fmt = figure_format or FigureFormat()
    path = save_figure(nll_against_minutes(points, reference), run.figures / fmt.file_name(FIGURE), dpi=fmt.dpi)
    return f"figures/{path.name}"


__all__ = ["FIGURE", "nll_curve"]
