"""``vaelab reproduce``: train named experiments, measure them, and report against the literature.

Each experiment trains into ``OUT/NAME`` (a normal run directory), or ``OUT/NAME-seedS`` when
``--set train.seed=S`` changes the recipe's seed, so that several seeds of one experiment sit side
by side. Re-running is cheap and safe: a finished run of the same config is reused, an interrupted
one is resumed from its checkpoint, and a directory holding a *different* config is refused rather
than overwritten.

On a data set with ground-truth factors the measurements include the five disentanglement metrics
(:func:`vaelab.eval.factor_eval.evaluate_disentanglement`), and a group's report tables them as
mean ± sd over every seed run of its members found in ``OUT``.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from vaelab.config import RunConfig, apply_overrides
from vaelab.data import Batches, to_unit_float
from vaelab.errors import VaelabError
from vaelab.eval import latent_analysis
from vaelab.eval.analysis import ACTIVE_UNIT_THRESHOLD
from vaelab.eval.bound import evaluation_seed
from vaelab.eval.disentanglement import DEFAULT_POINTS, METRIC_LABELS, Sizes
from vaelab.eval.summary import frechet_applicable
from vaelab.experiments import EXPERIMENTS, GROUPS, Experiment, expand, get_experiment
from vaelab.io import atomic_write_json, atomic_write_text, markdown_figure
from vaelab.model import load_model
from vaelab.model.store import read_model_json
from vaelab.runs import CHECKPOINT, RunDir
from vaelab.runs.rundir import CONFIG, MODEL_JSON, RESULTS
from vaelab.train import Trainer, make_batches, write_run_report

# a test record's keys that are not a family's extra terms
_RECORD_KEYS = {"epoch", "split", "stage", "total", "reconstruction", "kl", "kl_per_dim"}
# keys that change how fast a run goes, not what it computes
_EXECUTION_KEYS = {"train": ("threads", "device")}


def _comparable(config: RunConfig, seed: bool = True) -> dict[str, Any]:
    raw = config.to_dict()
    for section, keys in _EXECUTION_KEYS.items():
        for key in keys:
            raw[section].pop(key, None)
    if not seed:  # another seed of the recipe is still the recipe
        raw["train"].pop("seed", None)
    return raw


def run_name(experiment: Experiment, config: RunConfig) -> str:
    """``NAME``, or ``NAME-seedS`` for a seed other than the recipe's: seeds of one experiment side by side."""
    if config.train.seed == experiment.make_config().train.seed:
        return experiment.name
    return f"{experiment.name}-seed{config.train.seed}"


def metric_sizes(experiment: Experiment) -> Sizes:
    """The disentanglement metrics' sample sizes (``vaelab eval --disentanglement``'s defaults)."""
    return Sizes.points(DEFAULT_POINTS)


def _trained_run(experiment: Experiment, run: RunDir, config: RunConfig, console: Console) -> None:
    """Make sure ``run`` holds a finished run of ``config``: reuse, resume or train (its writer holds the lock)."""
    if run.own(CONFIG).exists():
        existing = RunConfig.load(run.config)
        if _comparable(existing) != _comparable(config):
            raise VaelabError(
                f"{run} holds a run of a different config than {experiment.name} v{experiment.version}; "
                "pass another --out or remove that directory"
            )
        if run.own(MODEL_JSON).exists():
            meta = read_model_json(run.path)
            if meta.get("finished") or meta.get("epochs_trained") == config.train.epochs:
                console.print(f"{experiment.name}: reusing the finished run in {run}")
                return
        if run.own(CHECKPOINT).exists():
            console.print(f"{experiment.name}: resuming {run}")
            Trainer.resume(run.path, console=console, figures=False).fit()
            return
    # a run killed before its first checkpoint has nothing to resume: starting afresh loses nothing
    epochs = config.train.epochs
    console.print(f"{experiment.name}: training into {run} ({epochs} epoch{'s' if epochs != 1 else ''})")
    Trainer(config, run.path, console=console, figures=False).fit()


def run_experiment(
    name: str,
    out: Path,
    epochs: int | None = None,
    console: Console | None = None,
    overrides: list[str] | None = None,
    figure_format: Any = None,
) -> dict[str, Any]:
    """Train (or reuse) one experiment, then write its figures, report and ``results.json``.

    ``epochs`` and ``overrides`` (``section.key=value``) change the published config: for quick
    trials only, and the report says so.
    """
    console = console or Console(stderr=True, soft_wrap=True)
    experiment = get_experiment(name)
    config, notice = experiment.config()
    if notice:
        console.print(f"{name}: {notice}")
    if epochs is not None:
        config.train.epochs = epochs
    apply_overrides(config, list(overrides or []))
    run = RunDir(Path(out) / run_name(experiment, config))
    with run.writing(create=True):  # one writer: a second reproduce of the same run is refused
        _trained_run(experiment, run, config, console)
        return _measure_and_report(name, experiment, run, console, figure_format)


def _measure_and_report(
    name: str, experiment: Experiment, run: RunDir, console: Console, figure_format: Any = None
) -> dict[str, Any]:
    """The finished run's analysis, figures, report and ``results.json``."""
    from vaelab.viz import write_run_figures

    run_dir = run.path
    model, config, meta = load_model(run_dir)
    dataset, batches = make_batches(config)  # the splits exactly as trained
    records = run.records()
    test = next(r for r in reversed(records) if r["split"] == "test" and "kind" not in r)
    train_split, test_split = batches["train"], batches["test"]
    analysis_train = Batches(
        train_split.images, train_split.labels, config.train.eval_batch_size, config.data.binarize, training=False
    )
    console.print(f"{name}: latent analysis (means, kNN, silhouette) of {len(test_split.images):,} test images")
    analysis = latent_analysis(model, analysis_train, test_split)
    console.print(f"{name}: figures into {run_dir / 'figures'}")
    figures = write_run_figures(
        model,
        run_dir / "figures",
        records,
        to_unit_float(test_split.images),
        test_split.labels,
        class_names=dataset.class_names,
        seed=config.train.seed,
        figure_format=figure_format,
    )
    write_run_report(run_dir, config, records, figures)
    train_seconds = sum(r.get("seconds", 0.0) for r in records if r["split"] == "train")
    last_train = next(r for r in reversed(records) if r["split"] == "train")
    result = {
        "experiment": name,
        "version": experiment.version,
        "title": experiment.title,
        "run_dir": run_dir.name,  # relative to the folder of runs: no machine's absolute path
        "seed": config.train.seed,
        "precision": config.train.precision,  # the recipe's, or fp32 where the CPU has no native bf16
        "epochs": meta.get("epochs_trained", config.train.epochs),
        "modified": _comparable(config, seed=False) != _comparable(experiment.config()[0], seed=False),
        "train_seconds": train_seconds,
        "train_minutes": round(train_seconds / 60, 1),
        "machine": _machine(meta),
        "test": {k: test[k] for k in ("total", "reconstruction", "kl")},
        # the mean of the last epoch's training losses: what a Keras log (and the study's table) shows
        "train_final": {k: last_train[k] for k in ("total", "reconstruction", "kl")},
        "published": experiment.published,
        "analysis": {k: v for k, v in analysis.items() if k != "latent_variance"},
        "latent_variance": analysis["latent_variance"],
        "figures": [str(p.relative_to(run_dir)) for p in figures],
    }
    if model.can("layer_means"):  # several stochastic layers: each one's KL, active units, collapse
        from vaelab.eval.summary import layer_analysis

        result["layers"] = layer_analysis(model, test_split, test.get("kl_per_dim"))
    if model.can("discrete_code"):  # a discrete latent's categories against the classes
        from vaelab.eval.clustering import best_match_accuracy, discrete_codes

        result["cluster_accuracy"] = best_match_accuracy(discrete_codes(model, test_split), test_split.labels)
    if model.takes_labels and frechet_applicable(dataset) is None:  # its samples per label, classified
        from vaelab.eval.conditional import label_accuracy

        console.print(f"{name}: label accuracy of conditional samples")
        result["label_accuracy"] = label_accuracy(model, seed=evaluation_seed(config.train.seed), dataset=dataset.name)
    if model.can("code_usage"):  # a quantised code: how much of its codebook the test set uses
        from vaelab.eval.summary import code_usage_analysis

        result["code_usage"] = code_usage_analysis(model, test_split)
    result["test"].update({k: v for k, v in test.items() if k not in _RECORD_KEYS and isinstance(v, float)})
    if experiment.frechet:
        from vaelab.eval.frechet import sample_frechet_distance

        if frechet_applicable(dataset) is None:
            reference = dataset.x_test[: len(test_split.images)]
            result["frechet"] = sample_frechet_distance(
                model, reference, seed=evaluation_seed(config.train.seed), dataset=dataset.name
            )
        else:
            result["frechet"] = {"frechet_distance": None, "frechet_note": frechet_applicable(dataset)}
    if experiment.nll_k:
        from vaelab.eval import estimate_log_likelihood
        from vaelab.eval.nll import REPORTED_KEYS

        console.print(
            f"{name}: the test NLL on {len(test_split.images)} test images (k = {experiment.nll_k} where importance-sampled)"
        )
        started, total = time.perf_counter(), len(test_split.images)

        def report(done: int) -> None:
            rate = done / (time.perf_counter() - started)
            console.print(f"{name}: NLL, k = {experiment.nll_k}: {done:,}/{total:,} images ({rate:.2f} images/s)")

        estimate = estimate_log_likelihood(model, test_split, k=experiment.nll_k, progress=report)
        result["test"].update({key: estimate[key] for key in REPORTED_KEYS if key in estimate})
        atomic_write_text(run.report, run.report.read_text(encoding="utf-8") + nll_section(result))
    if experiment.nll_curve is not None:  # the NLL against training minutes, of the snapshots and the final model
        from vaelab.experiments.curve import nll_curve

        k, images = experiment.nll_curve
        curve = nll_curve(
            run_dir,
            k=k,
            limit=images,
            figure_format=figure_format,
            reference=experiment.nll_reference(),
            say=lambda line: console.print(f"{name}: {line}", markup=False),
        )
        result["nll_curve"] = {key: curve[key] for key in ("k", "images", "seed", "points")}
        result["figures"].append(curve["figure"])
    if experiment.reference_log:  # a published training log: ours beside it, epoch by epoch
        result["training_log"] = training_log_beside(experiment.reference_log, records)
        atomic_write_text(run.report, run.report.read_text(encoding="utf-8") + training_log_section(result))
    if dataset.ground_truth is not None and model.can("encode") and not model.takes_labels:
        scores, paths = _disentanglement(
            experiment, run, model, dataset, config, meta, test_split, console, figure_format
        )
        result["disentanglement"] = scores
        # latent_traversals.png is redrawn with each row named after its factor, as `vaelab plot` draws it
        result["figures"] += [f for f in (str(p.relative_to(run_dir)) for p in paths) if f not in result["figures"]]
    atomic_write_json(run.results, result)
    return result


def _disentanglement(
    experiment: Experiment,
    run: RunDir,
    model,
    dataset,
    config: RunConfig,
    meta: dict,
    test_split,
    console: Console,
    figure_format: Any = None,
) -> tuple[dict[str, Any], list[Path]]:
    """The five metrics of the run's posterior means, as ``vaelab eval --disentanglement`` computes and records
    them (record, report section, figures); an earlier record of the same epoch, seed and sizes is reused."""
    from vaelab.eval.factor_eval import (
        disentanglement_record,
        disentanglement_summary,
        evaluate_disentanglement,
        normalised,
        write_disentanglement_section,
    )
    from vaelab.viz.disentanglement import write_disentanglement_figures

    epoch, seed, sizes = int(meta.get("epochs_trained", 0)), config.train.seed, metric_sizes(experiment)
    earlier = [
        r
        for r in run.records()
        if r.get("kind") == "disentanglement"
        and r["epoch"] == epoch
        and r.get("seed") == seed
        and r.get("metric_sizes") == dict(vars(sizes))
    ]
    if earlier:
        result = {key: value for key, value in earlier[-1].items() if key not in ("epoch", "split", "kind")}
    else:
        console.print(f"{experiment.name}: disentanglement metrics on {dataset.name} (seed {seed})")
        result = {"dataset": dataset.name, "seed": seed, **evaluate_disentanglement(model, dataset, seed, sizes)}
        run.append(disentanglement_record(result, epoch))
    write_disentanglement_section(run.report, result)
    paths = write_disentanglement_figures(
        model, run.figures, test_split.images[:10], normalised(result), result["factors"], False, figure_format
    )
    return disentanglement_summary(result), paths


def nll_reference_of_run(run_dir: Path) -> tuple[str, float] | None:
    """("paper", NLL) or ("target", NLL) (:meth:`Experiment.nll_reference`) where the run is an experiment's: named
    in its results.json, or by its folder's name (NAME or NAME-seedS) with the experiment's config (threads,
    device, precision and seed aside)."""
    run = RunDir(run_dir)
    name = None
    if run.own(RESULTS).is_file():
        try:
            name = json.loads(run.results.read_text(encoding="utf-8")).get("experiment")
        except (OSError, ValueError, AttributeError):
            name = None
    if name not in EXPERIMENTS:
        name = re.sub(r"-seed\d+$", "", run.path.name)
        if name not in EXPERIMENTS or not run.own(CONFIG).is_file():
            return None
        try:
            config = RunConfig.load(run.config)
        except VaelabError:
            return None
        recipe = _comparable(EXPERIMENTS[name].make_config(), seed=False)
        ours = _comparable(config, seed=False)
        for raw in (recipe, ours):
            raw["train"].pop("precision", None)  # the recipe's falls back to fp32 where bf16 is slow
        if recipe != ours:
            return None
    return EXPERIMENTS[name].nll_reference()


def _machine(meta: dict[str, Any]) -> dict[str, Any]:
    """The CPU the results were measured on and the threads the training used (as its model.json records)."""
    import os

    from vaelab.core.platform import cpu_capabilities

    cpu = cpu_capabilities()
    threads = meta.get("environment", {}).get("threads")
    return {"cpu": cpu.model, "extensions": cpu.extensions, "logical_cpus": os.cpu_count(), "training_threads": threads}


KERAS_COLUMNS = (  # the published log's column, ours as train.keras_log records it
    ("loss", "keras_progbar_loss"),
    ("reconstruction_loss", "keras_reconstruction_loss"),
    ("kl_loss", "keras_kl_loss"),
)


def training_log_beside(reference: tuple[dict[str, float], ...], records: list[dict[str, Any]]) -> list[dict]:
    """One row per epoch of the published log: its columns, and ours where this run trained that epoch."""
    ours = {r["epoch"]: r for r in records if r["split"] == "train"}
    rows = []
    for published in reference:
        row = {"epoch": published["epoch"], "published": {k: published[k] for k, _ in KERAS_COLUMNS}}
        mine = ours.get(published["epoch"])
        if mine is not None and all(key in mine for _, key in KERAS_COLUMNS):
            row["ours"] = {k: mine[key] for k, key in KERAS_COLUMNS}
        rows.append(row)
    return rows


def training_log_section(result: dict[str, Any]) -> str:
    rows = result["training_log"]
    lines = [
        "",
        "## Training log beside the published one",
        "",
        "Per image, nats, as Keras' `fit()` prints them: reconstruction and KL are running means of the batch "
        "means over the epoch; loss is their progress bar's mean of the running mean of the total. The run "
        "trains on the test images too, so its test numbers above are not held out.",
        "",
        "| epoch | loss (Keras) | loss (ours) | reconstruction (Keras) | reconstruction (ours) | KL (Keras) | KL (ours) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p, o = row["published"], row.get("ours")
        cells = [f"{p[k]:.2f} | " + (f"{o[k]:.2f}" if o else "–") for k, _ in KERAS_COLUMNS]
        lines.append(f"| {row['epoch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def nll_section(result: dict[str, Any]) -> str:
    t, published = result["test"], result["published"].get("nll")
    how = t.get("nll_note") or f"importance sampling, k = {t['k']}"
    lines = [
        "",
        f"## Test log-likelihood ({how})",
        "",
        f"NLL = {t['nll']:.2f} ± {t['nll_stderr']:.2f} nats per image ({t['bits_per_dim']:.4f} bits/dim)",
    ]
    if "likelihood_note" in t:
        lines[-1] += f". **It is {t['likelihood_note']}**"
    if published is not None:
        lines[-1] += (
            f"; the paper reports {published:.2f} ({t['nll'] - published:+.2f} nats, "
            f"{'within' if abs(t['nll'] - published) <= 1.5 else 'outside'} the 1.5-nat target)."
        )
    return "\n".join(lines) + "\n"


def reproduce(
    name: str,
    out: Path,
    epochs: int | None = None,
    console: Console | None = None,
    overrides: list[str] | None = None,
    figure_format: Any = None,
) -> list[dict[str, Any]]:
    """Run an experiment or a group of them; a group also gets ``OUT/report.md`` and ``OUT/results.json``."""
    names = expand(name)
    results = [run_experiment(n, out, epochs, console, overrides, figure_format) for n in names]
    if name in GROUPS:
        atomic_write_json(Path(out) / "results.json", results)
        atomic_write_text(Path(out) / "report.md", group_report(name, results, seed_runs(Path(out), names)))
    return results


def seed_runs(out: Path, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The ``results.json`` of every finished seed run of these experiments in ``out`` (``NAME`` and
    ``NAME-seedS``), at the experiment's current version, in the order of ``names`` and then of seed.

    Where ``out`` has no run of the recipe's own seed, the shipped pretrained model of that name stands in
    for it (marked ``shipped``): it is that run, so other seeds need not retrain it to be compared."""
    found = []
    for name in names:
        pattern = re.compile(rf"{re.escape(name)}(-seed\d+)?")
        folders = [f for f in (Path(out).iterdir() if Path(out).is_dir() else ()) if pattern.fullmatch(f.name)]
        if not any(f.name == name for f in folders):
            folders += _shipped(name)
        runs = []
        for folder in folders:
            results = folder / "results.json"
            if results.is_file():
                result = json.loads(results.read_text(encoding="utf-8"))
                if result.get("version") == EXPERIMENTS[name].version:
                    result.setdefault("seed", EXPERIMENTS[name].make_config().train.seed)
                    result.setdefault("train_final", _final_training_mean(folder))
                    result["shipped"] = folder.parent != Path(out)
                    runs.append(result)
        found += sorted(runs, key=lambda r: r.get("seed", 0))
    return found


def _shipped(name: str) -> list[Path]:
    from vaelab import pretrained

    return [pretrained.path(name)] if name in pretrained.available() else []


def _final_training_mean(folder: Path) -> dict[str, float] | None:
    """The last epoch's mean training losses in a run folder's ``metrics.jsonl`` (None if it has none)."""
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return None
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if r.get("split") == "train" and "total" in r]
    return {k: train[-1][k] for k in ("total", "reconstruction", "kl")} if train else None


def _verdict(result: dict[str, Any]) -> str:
    published = result["published"].get("total")
    if published is None:
        return ""
    delta = result["test"]["total"] - published
    return f"{delta:+.1f}"


def comparison_paragraph(results: list[dict[str, Any]]) -> str:
    """Sentences generated from the numbers: which configuration wins, by how much, and vs the study."""
    ranked = sorted(results, key=lambda r: r["test"]["total"])
    best, worst = ranked[0], ranked[-1]
    parts = [
        f"On the MNIST test set the best configuration is **{best['experiment']}** at "
        f"{best['test']['total']:.2f} nats per image; the weakest is {worst['experiment']} at "
        f"{worst['test']['total']:.2f}, {worst['test']['total'] - best['test']['total']:.2f} nats behind."
    ]
    for r in ranked[1:-1]:
        parts.append(
            f"{r['experiment']} sits in between at {r['test']['total']:.2f} "
            f"({r['test']['total'] - best['test']['total']:.2f} nats behind the best)."
        )
    beaten = [r for r in results if r["published"] and r["test"]["total"] <= r["published"]["total"]]
    if len(beaten) == len(results):
        margins = ", ".join(f"{r['experiment']} by {r['published']['total'] - r['test']['total']:.1f}" for r in results)
        parts.append(f"Every model is at or below the study's total loss ({margins} nats).")
    else:
        missed = ", ".join(
            f"{r['experiment']} ({r['test']['total'] - r['published']['total']:+.1f})"
            for r in results
            if r not in beaten
        )
        parts.append(f"Not every model matches the study: {missed} nats against its table.")
    for r in results:
        dims, active = len(r["latent_variance"]), r["analysis"]["active_units"]
        if active < dims:
            inactive = [f"z{j}" for j, v in enumerate(r["latent_variance"]) if v <= ACTIVE_UNIT_THRESHOLD]
            parts.append(
                f"{r['experiment']} uses only {active} of its {dims} latent dimensions: "
                f"{', '.join(inactive)} collapsed to the prior (Cov_x(E_q[z_j]) <= {ACTIVE_UNIT_THRESHOLD}), "
                "so its figures vary little along that axis and its loss gains little from the extra dimension."
            )
    by_knn = sorted(results, key=lambda r: -r["analysis"]["knn5_accuracy"])
    parts.append(
        f"The latent means of {by_knn[0]['experiment']} separate the digits best "
        f"(kNN accuracy {100 * by_knn[0]['analysis']['knn5_accuracy']:.1f}%, silhouette "
        f"{by_knn[0]['analysis']['silhouette']:.3f})."
    )
    return " ".join(parts)


def nll_group_report(group: str, results: list[dict[str, Any]]) -> str:
    """One table of test log-likelihoods for a group of NLL experiments (one training budget)."""
    lines = [
        f"# vaelab reproduce {group}",
        "",
        f"Test NLL by importance sampling (k = {results[0]['test']['k']}, all test images), ± one standard error "
        "over images; -ELBO, KL and active units (Cov_x(E_q[z_j]) > 0.01) on the test set, nats per image.",
        "",
        "| experiment | what | epochs | **NLL** | -ELBO | KL | active units | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, a = r["test"], r["analysis"]
        lines.append(
            f"| {r['experiment']} | {r['title']} | {r['epochs']} | **{t['nll']:.2f} ± {t['nll_stderr']:.2f}** "
            f"| {t['total']:.2f} | {t['kl']:.2f} | {a['active_units']}/{len(r['latent_variance'])} "
            f"| {r['train_seconds'] / 60:.1f} min |"
        )
    best = min(results, key=lambda r: r["test"]["nll"])
    lines += ["", f"Best: **{best['experiment']}** at {best['test']['nll']:.2f} nats.", ""]
    return "\n".join(lines)


def _spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def seed_table(results: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    """Each experiment's last-epoch training mean (what the study's table shows) and test total, mean ± sd
    over its seed runs."""
    lines = [
        "",
        "## Over seeds",
        "",
        "Mean ± sample standard deviation over the seed runs found beside each other (`NAME`, `NAME-seedS`; a "
        "shipped pretrained model stands in for the recipe's seed where it was not trained here). The training "
        "mean is the mean of the last epoch's batch losses on the 55,000 training images, the quantity the "
        "study's table shows (as a Keras running mean, on all 70,000 images); the test total is the -ELBO on "
        "the 10,000 held-out test images, per image in nats.",
        "",
        "| experiment | seeds | training mean, last epoch | study (training) | test total | test KL | test recon |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mine = [s for s in runs if s["experiment"] == r["experiment"]] or [r]
        trained = [s["train_final"] for s in mine if s.get("train_final")]
        seeds = ", ".join(f"{s['seed']}{' (shipped)' if s.get('shipped') else ''}" for s in mine)
        study = r["published"].get("total")
        lines.append(
            f"| {r['experiment']} | {seeds} | "
            + (_spread([t["total"] for t in trained], 2) if trained else "–")
            + f" | {f'~{study:.0f}' if study is not None else '–'} | "
            + " | ".join(_spread([s["test"][k] for s in mine], 2) for k in ("total", "kl", "reconstruction"))
            + " |"
        )
    return lines


def disentanglement_group_report(group: str, results: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """One table of the five metrics per experiment, mean ± sd over its seed runs in ``runs``."""
    lines = [
        f"# vaelab reproduce {group}",
        "",
        "The disentanglement metrics of the posterior means (docs/disentanglement.md): mean ± sample standard "
        "deviation over the seed runs found beside each other (`NAME`, `NAME-seedS`); one number where one seed "
        "ran. -ELBO and KL on the test split, nats per image.",
        "",
        "| experiment | seeds | " + " | ".join(METRIC_LABELS.values()) + " | -ELBO | KL | train time |",
        "|---|---|" + "---|" * (len(METRIC_LABELS) + 3),
    ]
    for r in results:
        mine = [s for s in runs if s["experiment"] == r["experiment"] and "disentanglement" in s] or [r]
        cells = [_spread([s["disentanglement"][key] for s in mine]) for key in METRIC_LABELS]
        lines.append(
            f"| {r['experiment']} | {', '.join(str(s.get('seed', 0)) for s in mine)} | "
            + " | ".join(cells)
            + f" | {_spread([s['test']['total'] for s in mine])} | {_spread([s['test']['kl'] for s in mine])} "
            f"| {statistics.mean(s['train_seconds'] for s in mine) / 60:.1f} min |"
        )
    if any(s.get("modified") for s in runs + results):
        lines += ["", "**Note: some of these runs changed the published config (--epochs or --set).**"]
    lines += ["", "What the literature reports, and on which budget:", ""]
    lines += [f"- {r['experiment']}: {EXPERIMENTS[r['experiment']].source}" for r in results]
    lines.append("")
    for r in results:
        lines += [f"## {r['experiment']}: {EXPERIMENTS[r['experiment']].title}", ""]
        lines += [markdown_figure(Path(f).stem, f"{r['run_dir']}/{f}") for f in r["figures"]]
        lines.append("")
    return "\n".join(lines)


def group_report(group: str, results: list[dict[str, Any]], runs: list[dict[str, Any]] | None = None) -> str:
    if all("disentanglement" in r for r in results):
        return disentanglement_group_report(group, results, runs if runs is not None else results)
    if all("nll" in r["test"] for r in results):
        return nll_group_report(group, results)
    lines = [
        f"# vaelab reproduce {group}",
        "",
        "Test-set values per image in nats (we train on the first 55,000 training images, validate on the last "
        "5,000 and report on the 10,000 test images; the study trained on all 70,000 images). "
        "kNN: accuracy of a 5-nearest-neighbour classifier fit on the training latent means, scored on the test "
        "latent means. Silhouette: of the test latent means grouped by digit. Active units: dimensions with "
        "Cov_x(E_q[z_j]) > 0.01 (Burda et al. 2016).",
        "",
        "| experiment | latent dim | study total | study KL | study recon | **our total** | our KL | our recon "
        "| vs study | kNN (k=5) | silhouette | active units | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p, t, a = r["published"], r["test"], r["analysis"]
        latent_dim = len(r["latent_variance"])
        lines.append(
            f"| {r['experiment']} | {latent_dim} | ~{p.get('total', float('nan')):.0f} | ~{p.get('kl', float('nan')):.1f} "
            f"| ~{p.get('reconstruction', float('nan')):.0f} | **{t['total']:.2f}** | {t['kl']:.2f} | {t['reconstruction']:.2f} "
            f"| {_verdict(r)} | {100 * a['knn5_accuracy']:.1f}% | {a['silhouette']:.3f} | {a['active_units']}/{latent_dim} "
            f"| {r['train_seconds'] / 60:.1f} min |"
        )
    if any(r.get("modified") for r in results):
        lines += [
            "",
            "**Note: these runs changed the published config (--epochs or --set); the comparison with "
            "the study does not hold for them.**",
        ]
    lines += ["", comparison_paragraph(results)]
    lines += seed_table(results, runs if runs is not None else results)
    lines.append("")
    for r in results:
        lines += [f"## {r['experiment']}: {EXPERIMENTS[r['experiment']].title}", ""]
        rel = Path(r["run_dir"]).name
        lines += [markdown_figure(Path(f).stem, f"{rel}/{f}") for f in r["figures"]]
        lines.append("")
    return "\n".join(lines)
