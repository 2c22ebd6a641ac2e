"""Typer commands: train, plot, sample, eval, datasets."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vaelab.errors import VaelabError
from vaelab.pretrained import available as pretrained_names

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train, evaluate, visualise and ship variational autoencoders.",
)
SEED_MAX = 2**63 - 1  # torch's generators take a signed 64-bit seed
DEFAULT_POINTS = 1_000  # vaelab.eval.disentanglement.DEFAULT_POINTS, not imported: `vaelab --help` stays instant
NLL_K = 5000  # eval's importance samples unless --k says otherwise (Burda et al.'s)


def _print_version(value: bool) -> None:
    if value:
        import vaelab

        print(f"vaelab {vaelab.__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, evaluate, visualise and ship variational autoencoders."""
    if ctx.invoked_subcommand is None:  # bare `vaelab`: the help, as `vaelab --help` gives it (exit 0)
        text = ctx.get_help()  # typer's rich help prints itself and returns ""
        if text:
            print(text)
        raise typer.Exit()


def _width(stream) -> int | None:
    """A terminal's own width; into a file or a pipe 160 columns (rich's 80 cut the tables' numbers short)."""
    return None if stream.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH


PIPED_WIDTH = 160
console = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum typer can show as a choice; values mirror the config's allowed values."""
    return Enum(name, {v: v for v in values}, type=str)


Gradient = _choices("Gradient", ("reparam", "dreg"))
Binarize = _choices("Binarize", ("none", "dynamic", "static"))
Precision = _choices("Precision", ("fp32", "bf16"))
FigureKind = _choices("FigureKind", ("png", "svg", "pdf"))  # vaelab.viz.FORMATS, without importing matplotlib
FormatOpt = Annotated[FigureKind, typer.Option("--format", help="Figure files: png, svg or pdf.")]
DpiOpt = Annotated[
    int, typer.Option("--dpi", min=20, max=1200, help="Resolution of PNG figures (and of images inside svg/pdf).")
]


def _figure_format(kind: FigureKind, dpi: int):
    from vaelab.viz import FigureFormat

    return FigureFormat(kind.value, dpi)


class Interrupted(Exception):
    """Ctrl-C during a command that can say what to do next; the CLI prints the message and exits 130."""


def _interrupted_training(out: Path) -> Interrupted:
    from vaelab.runs import RunDir

    if RunDir(out).checkpoint.exists():
        return Interrupted(f"interrupted; resume with `vaelab train --resume {shlex.quote(str(out))}`")
    return Interrupted("interrupted before the run's first checkpoint: nothing to resume; start it again")


def _toml_value(value: object) -> str:
    """A flag's value as the TOML an override holds (inf and nan included, so validation can name them)."""
    import tomli_w

    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _default_out() -> Path:
    return Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")


def _check_fresh_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise VaelabError(f"--out {out} is a file, not a directory")
    # a run killed before its first checkpoint has nothing to resume: starting afresh loses nothing
    if (out / "checkpoint" / "last.safetensors").exists() or (out / "model.json").exists():
        raise VaelabError(
            f"{out} already holds a run; continue it with `vaelab train --resume {out}` or choose another --out"
        )


@app.command()
def train(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/train-DATE-TIME).")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="A TOML file of \\[data] \\[model] \\[objective] \\[train] tables.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override one key: section.key=value (repeatable).")
    ] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue an interrupted run directory.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: 30).")] = None,
    latent_dim: Annotated[int | None, typer.Option("--latent-dim", help="Latent dimensions (default: 2).")] = None,
    arch: Annotated[str | None, typer.Option(help="Encoder/decoder networks (default: conv; `vaelab list`).")] = None,
    posterior: Annotated[
        str | None, typer.Option(help="q(z|x): diagonal, full, iaf... (default: diagonal; `vaelab list`).")
    ] = None,
    likelihood: Annotated[str | None, typer.Option(help="p(x|z) (default: bernoulli; `vaelab list`).")] = None,
    prior: Annotated[str | None, typer.Option(help="p(z) (default: standard; `vaelab list`).")] = None,
    objective: Annotated[str | None, typer.Option(help="Training bound (default: elbo; `vaelab list`).")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Importance samples for --objective iwae.")] = None,
    gradient: Annotated[
        Gradient | None,
        typer.Option(help="IWAE encoder gradient: reparam, or dreg (doubly reparameterised) (default: reparam)."),
    ] = None,
    beta: Annotated[float | None, typer.Option(help="KL weight (beta-VAE) (default: 1).")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="mnist, fashion-mnist, an IDX or .npy folder, or an .npz file.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder searched first for data files.")] = None,
    binarize: Annotated[Binarize | None, typer.Option(help="Binarisation of the images (default: none).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help=" (default: 128)")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (default: 1e-3).")] = None,
    seed: Annotated[int | None, typer.Option(help="The one seed of the run (default: 0).")] = None,
    precision: Annotated[Precision | None, typer.Option(help="fp32, or bf16 autocast (default: fp32).")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads (0 = all cores).")] = None,
    ema_decay: Annotated[
        float | None,
        typer.Option(
            "--ema-decay",
            help="Evaluate and save a moving average of the weights, decaying by this factor per step, e.g. 0.999 (default: 0, off).",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: cpu).")] = None,
    early_stopping: Annotated[
        int | None,
        typer.Option(
            "--early-stopping", help="Stop after N epochs without a better validation total (default: 0, off)."
        ),
    ] = None,
    keep_best: Annotated[
        bool | None,
        typer.Option(
            "--keep-best/--keep-last",
            help="Test, save and draw the weights of the epoch with the best validation total (default: the last).",
        ),
    ] = None,
    no_figures: Annotated[bool, typer.Option("--no-figures", help="Skip writing figures at the end.")] = False,
    figure_kind: FormatOpt = FigureKind.png,
    dpi: DpiOpt = 110,
) -> None:
    """Train a VAE. With no options: the study's experiment 1 (2-D conv VAE, MNIST, 30 epochs)."""
    options_given = [
        name
        for name, value in locals().items()
        if value and name not in ("resume", "no_figures", "epochs", "figure_kind", "dpi")
    ]
    from vaelab.config import RunConfig, apply_overrides
    from vaelab.runs import RunDir
    from vaelab.train import Trainer
    from vaelab.train.distributed import launched_rank

    main = launched_rank() == 0  # under torchrun only rank 0 writes and reports
    figure_format = _figure_format(figure_kind, dpi)

    if resume is not None:
        if options_given:
            raise VaelabError(
                f"--resume continues a run with its own config; drop {', '.join('--' + o.rstrip('_').replace('_', '-') for o in options_given)} "
                "(only --epochs, to extend the run, and --no-figures go with --resume)"
            )
        try:
            trainer = Trainer.resume(
                resume, figures=not no_figures, figure_format=figure_format
            )  # holds the run's lock until fit() ends
            if epochs is not None:
                if len(trainer.stages) > 1 and trainer.epoch > trainer.config.train.epochs:
                    raise VaelabError(
                        f"{resume} has moved past its first stage ({trainer.stages[0].name}, "
                        f"{trainer.config.train.epochs} epochs): --epochs, which sets that stage's epochs, cannot change now"
                    )
                if epochs < trainer.epoch:
                    raise VaelabError(f"{resume} has already trained {trainer.epoch} epochs; --epochs must be >= that")
                trainer.config.train.epochs = epochs
                if main:
                    trainer.config.save(trainer.run.config)
            if main:
                err_console.print(f"resuming {resume} {trainer.position}")
            test = trainer.fit()
        except KeyboardInterrupt:
            raise _interrupted_training(resume) from None
        out = resume
    else:
        config = RunConfig.load(config_file) if config_file else RunConfig()
        flags = {
            "train.epochs": epochs,
            "model.latent_dim": latent_dim,
            "model.arch": arch,
            "model.posterior": posterior,
            "model.likelihood": likelihood,
            "model.prior": prior,
            "objective.name": objective,
            "objective.k": k,
            "objective.gradient": gradient.value if gradient else None,
            "objective.beta": beta,
            "data.name": dataset,
            "data.data_dir": str(data_dir) if data_dir else None,
            "data.binarize": binarize.value if binarize else None,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.seed": seed,
            "train.precision": precision.value if precision else None,
            "train.threads": threads,
            "train.ema_decay": ema_decay,
            "train.device": device,
            "train.early_stopping": early_stopping,
            "train.keep_best": keep_best,
        }
        overrides = [f"{key}={_toml_value(value)}" for key, value in flags.items() if value is not None]
        config = apply_overrides(config, overrides + list(set_ or []))
        out = out or _default_out()
        try:
            # the lock first: a second writer is refused before the data loads; a setup failure removes the folder
            with RunDir(out).writing(create=True) if main else nullcontext():
                _check_fresh_out(out)
                if main:
                    err_console.print(f"training into {out}")
                trainer = Trainer(config, out, figures=not no_figures, figure_format=figure_format)
                test = trainer.fit()
        except KeyboardInterrupt:
            raise _interrupted_training(out) from None
    if test:  # rank 0 (the others return no test metrics)
        console.print(
            f"test: total {test['total']:.2f} = reconstruction {test['reconstruction']:.2f} + KL {test['kl']:.2f} "
            f"nats per image; run written to {out}",
            markup=False,
        )
        _print_run_files(out, trainer.figure_paths)


def _print_run_files(out: Path, figures: list[Path]) -> None:
    """Where the run's results are, and how to look at its curves (the end of `vaelab train`)."""
    if figures:
        names = ", ".join(p.name for p in figures)
        console.print(f"figures: {out / 'figures'} ({names})", markup=False)
    console.print(f"report: {out / 'report.md'}", markup=False)
    console.print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(out))}", markup=False)


def _model_dir(run_dir: Path | None, pretrained: str | None) -> Path:
    """A run directory given by path, or a pretrained model's folder given by name (exactly one)."""
    if (run_dir is None) == (pretrained is None):
        raise VaelabError("give either a RUN_DIR or --pretrained NAME (one of them)")
    if pretrained is not None:
        from vaelab import pretrained as shipped

        return shipped.path(pretrained)
    from vaelab.runs import RunDir

    run = RunDir(run_dir)
    for name in ("model.json", "model.safetensors", "config.toml", "metrics.jsonl"):
        run.own(name)  # a link out of the run is refused before anything reads it
    return run_dir


RunDirArg = Annotated[Path | None, typer.Argument(help="A run directory (or use --pretrained).")]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        help=f"A model shipped with vaelab: {', '.join(pretrained_names())}.",
    ),
]


@app.command()
def plot(
    run_dir: RunDirArg = None,
    pretrained: PretrainedOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Figures folder (default: RUN_DIR/figures, or figures/NAME).")
    ] = None,
    figure_kind: FormatOpt = FigureKind.png,
    dpi: DpiOpt = 110,
) -> None:
    """(Re)draw a run's figures: loss curves, reconstructions, samples, interpolation; the latent manifold and
    scatter (2-D), 3-D scatter, projections and cross-sections (3-D), latent traversals and the means' principal
    components (more than 3-D); on a data set with factors (dsprites) the traversals name each row's factor, and
    the factor x latent mutual information is drawn too."""
    from vaelab.data import to_unit_float
    from vaelab.model import load_model
    from vaelab.runs import RunDir
    from vaelab.train import make_batches, read_records
    from vaelab.viz import write_run_figures

    folder = _model_dir(run_dir, pretrained)
    model, config, meta = load_model(folder)
    dataset, batches = make_batches(config)
    test = batches["test"]
    into_run = out is None and pretrained is None
    out = out or (Path("figures") / pretrained if pretrained else folder / "figures")
    err_console.print(f"drawing the figures of {pretrained or folder} into {out}", markup=False)
    with RunDir(folder).writing() if into_run else nullcontext():
        paths = write_run_figures(
            model,
            out,
            read_records(folder),
            to_unit_float(test.images),
            test.labels,
            class_names=dataset.class_names,
            seed=config.train.seed,
            figure_format=_figure_format(figure_kind, dpi),
        )
        if dataset.ground_truth is not None and model.can("encode") and not model.takes_labels:
            from vaelab.eval.factor_eval import normalised_information
            from vaelab.viz.disentanglement import write_disentanglement_figures

            information = normalised_information(model, dataset, seed=config.train.seed)
            names = dataset.ground_truth.names
            paths += write_disentanglement_figures(
                model, out, test.images[:10], information, names, False, _figure_format(figure_kind, dpi)
            )
    for path in paths:
        console.print(str(path))


@app.command()
def sample(
    run_dir: RunDirArg = None,
    pretrained: PretrainedOpt = None,
    n: Annotated[int, typer.Option("-n", min=1, max=10_000, help="How many images.")] = 64,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Sampling seed.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Image path, .png, .svg or .pdf (default: RUN_DIR/figures/samples-N-seedS[-labelL].png).",
        ),
    ] = None,
    label: Annotated[
        int | None,
        typer.Option("--label", help="Decode every draw under this label (a conditional model, e.g. cvae)."),
    ] = None,
    figure_kind: Annotated[
        FigureKind | None, typer.Option("--format", help="png, svg or pdf (default: --out's suffix, else png).")
    ] = None,
    scale: Annotated[
        int, typer.Option("--scale", min=1, max=32, help="Screen pixels per image pixel, nearest neighbour.")
    ] = 4,
) -> None:
    """Decode N draws from the prior into a PNG grid (a conditional model: the classes in turn, or --label's)."""
    import torch

    from vaelab.model import load_model
    from vaelab.runs import RunDir
    from vaelab.viz import save_image_grid

    folder = _model_dir(run_dir, pretrained)
    model, _, _ = load_model(folder)
    sampler = model if label is None else model.condition(label)  # refused in one line where it does not apply
    images = sampler.sample(n, generator=torch.Generator().manual_seed(seed))
    default_dir = Path("figures") / pretrained if pretrained else folder / "figures"
    into_run = out is None and pretrained is None
    suffix = f".{figure_kind.value}" if figure_kind else ".png"
    out = out or default_dir / f"samples-{n}-seed{seed}{'' if label is None else f'-label{label}'}{suffix}"
    if figure_kind and out.suffix.lower() != suffix:
        raise VaelabError(f"--out {out} does not end in {suffix}, the --format asked for")
    with RunDir(folder).writing() if into_run else nullcontext():
        save_image_grid(images, out, scale=scale)
    console.print(str(out))


@app.command("eval")
def evaluate(
    run_dir: RunDirArg = None,
    pretrained: PretrainedOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=SEED_MAX,
            help="Seed of the ELBO noise and the Fréchet prior samples (default: the one training used for its test numbers).",
        ),
    ] = None,
    nll: Annotated[
        bool, typer.Option("--nll", help="Also estimate -log p(x) by importance sampling (IWAE-k, Burda et al.).")
    ] = False,
    k: Annotated[
        int | None,
        typer.Option("--k", min=1, max=1_000_000, help=f"Importance samples per image for --nll [default: {NLL_K}]."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Evaluate the first N test images (0 = all); nothing is written.")
    ] = 0,
    fd_samples: Annotated[
        int,
        typer.Option(
            "--fd-samples",
            min=2,
            max=1_000_000,
            help="Prior samples for the Fréchet distance and a conditional model's label accuracy (MNIST and Fashion-MNIST only).",
        ),
    ] = 10_000,
    no_write: Annotated[
        bool, typer.Option("--no-write", help="Do not append to the run's metrics.jsonl and report.md.")
    ] = False,
    threads: Annotated[int, typer.Option(help="Torch threads (0 = torch's default).")] = 0,
    disentanglement: Annotated[
        bool,
        typer.Option(
            "--disentanglement",
            help="Instead: BetaVAE, FactorVAE, MIG, SAP and DCI on the data set's factors (dsprites...), and "
            "the traversal and mutual-information figures (docs/disentanglement.md).",
        ),
    ] = False,
    metric_points: Annotated[
        int,
        typer.Option(
            "--metric-points",
            min=2,
            max=100_000,
            help="With --disentanglement: training points of BetaVAE, FactorVAE and DCI (half as many to "
            "evaluate); 10000 is disentanglement_lib's setting.",
        ),
    ] = DEFAULT_POINTS,
    snapshots: Annotated[
        bool,
        typer.Option(
            "--snapshots",
            help="Instead: the IWAE-k NLL (--k, --limit) of each of the run's snapshots (train.snapshot_minutes) "
            "and of its final model against training time: metrics.jsonl records, figures/nll_vs_minutes.png and a "
            "report section (written with --limit too: each point names its images). With --disentanglement: the "
            "five disentanglement metrics of each (--metric-points), figures/disentanglement_vs_minutes.png.",
        ),
    ] = False,
    figure_kind: FormatOpt = FigureKind.png,
    dpi: DpiOpt = 110,
) -> None:
    """Test-set bound (-ELBO, reconstruction, KL, KL per dimension), active units, posterior collapse, kNN and
    logistic-regression probes, silhouette, Fréchet distance of prior samples; with --nll the IWAE-k NLL.
    With --disentanglement, instead, the five disentanglement metrics of the posterior means. With --snapshots,
    instead, the NLL (or with --disentanglement the five metrics) of each snapshot and of the final model against
    training minutes.

    A run directory gets the results appended to its metrics.jsonl (a record with "kind": "analysis") and an
    "Evaluation" section in its report.md, unless --no-write or --limit; --pretrained models are only printed.
    The Fréchet distance uses the features of vaelab's own classifier of the data set: it is NOT comparable
    with Inception-based FID, and it is computed for MNIST and Fashion-MNIST runs only.
    """
    import torch

    from vaelab.config import check_threads
    from vaelab.eval import estimate_log_likelihood, evaluation_seed
    from vaelab.eval.nll import REPORTED_KEYS
    from vaelab.eval.summary import analysis_record, evaluate_model, write_evaluation_section
    from vaelab.model import load_model
    from vaelab.runs import RunDir
    from vaelab.train import make_batches

    check_threads("--threads", threads)
    if threads:
        torch.set_num_threads(threads)
    if snapshots:
        if pretrained is not None or run_dir is None:
            raise VaelabError("--snapshots reads a run directory's snapshots/: give RUN_DIR, not --pretrained")
        figure_format = _figure_format(figure_kind, dpi)
        if disentanglement:
            if nll or limit or k is not None:
                raise VaelabError(
                    "--snapshots --disentanglement scores the metrics: --nll, --k and --limit go with NLL"
                )
            return _evaluate_snapshot_disentanglement(run_dir, metric_points, seed, no_write, as_json, figure_format)
        if metric_points != DEFAULT_POINTS:
            raise VaelabError("--metric-points goes with --disentanglement")
        return _evaluate_snapshots(run_dir, k or NLL_K, limit, seed, no_write, as_json, figure_format)
    if disentanglement:
        if nll or limit or k is not None:
            raise VaelabError(
                "--disentanglement is an evaluation of its own: give --nll (with --k) or --limit in another call"
            )
        figure_format = _figure_format(figure_kind, dpi)
        return _evaluate_disentanglement(run_dir, pretrained, as_json, seed, metric_points, no_write, figure_format)
    if metric_points != DEFAULT_POINTS:
        raise VaelabError("--metric-points goes with --disentanglement")
    if k is not None and not nll:
        raise VaelabError("--k is the NLL's importance samples: it goes with --nll or --snapshots")
    k = NLL_K if k is None else k
    if figure_kind != FigureKind.png or dpi != 110:
        raise VaelabError(
            "--format and --dpi go with --disentanglement or --snapshots (their figures); eval draws no others"
        )
    folder = _model_dir(run_dir, pretrained)
    run = RunDir(folder)
    written = pretrained is None and not no_write and not limit
    # a writing eval holds the run's lock before it reads the model: a resume extending the run refuses it
    with run.writing() if written and run.model_json.is_file() else nullcontext():
        if written:
            run.records()  # a metrics.jsonl it cannot append to is refused now, not after the evaluation
        model, config, meta = load_model(folder)
        if limit:
            config.data.test_limit = limit  # the first N images, binarised exactly as in the full test set
        dataset, batches = make_batches(config)
        test = batches["test"]
        seed = evaluation_seed(config.train.seed) if seed is None else seed
        name = pretrained or str(folder)
        result = {
            "model": name,
            "dataset": dataset.name,
            "split": "test",
            "images": len(test.images),
            "seed": seed,
            **evaluate_model(
                model,
                dataset,
                batches["train"],
                test,
                seed=seed,
                frechet_samples=fd_samples,
                say=lambda line: err_console.print(line, markup=False),
            ),
        }
        if nll:
            started = time.perf_counter()

            def report(done: int) -> None:
                rate = done / (time.perf_counter() - started)
                err_console.print(f"NLL, k = {k}: {done}/{len(test.images)} images ({rate:.2f} images/s)")

            estimate = estimate_log_likelihood(model, test, k=k, seed=seed, progress=report)
            result.update({key: estimate[key] for key in REPORTED_KEYS if key in estimate})
            if result["nll_stderr"] != result["nll_stderr"]:  # NaN for a single image: JSON has no NaN
                result["nll_stderr"] = None
        if written:
            run.append(analysis_record(result, int(meta.get("epochs_trained", 0))))
            write_evaluation_section(run.report, result)
    if limit and pretrained is None and not no_write:
        err_console.print(f"--limit {limit}: a subset of the test set, so nothing was written to {folder}")
    if as_json:
        print(json.dumps(result))
        return
    _print_evaluation(name, result, folder if written else None)


def _evaluate_snapshots(
    run_dir: Path, k: int, limit: int, seed: int | None, no_write: bool, as_json: bool, figure_format=None
) -> None:
    """``eval --snapshots``: an evaluation of its own, like --disentanglement; see vaelab.experiments.curve."""
    from vaelab.experiments.curve import nll_curve
    from vaelab.experiments.reproduce import nll_reference_of_run

    folder = _model_dir(run_dir, None)
    result = nll_curve(
        folder,
        k=k,
        limit=limit,
        seed=seed,
        write=not no_write,
        figure_format=figure_format,
        reference=nll_reference_of_run(folder),
        say=lambda line: err_console.print(line, markup=False),
    )
    if as_json:
        print(json.dumps(result))
        return
    how = result["points"][0].get("nll_note") or f"IWAE, k = {k}"
    reference = result["reference"]
    _print_curve(
        folder,
        result,
        f"{folder}: test NLL ({how}, {result['images']:,} images) against training time",
        {"NLL (nats)": lambda p: f"{p['nll']:.2f}", "± s.e.": lambda p: _stderr_text(p["nll_stderr"])},
        "Test NLL against training time",
        [] if reference is None else [f"{reference['label']}: {reference['nll']:.2f}"],
    )


def _stderr_text(stderr: float | None) -> str:
    return "n/a" if stderr is None else f"{stderr:.2f}"


def _print_curve(folder: Path, result: dict, title: str, cells: dict, section: str, notes: list[str]) -> None:
    """A curve's table (a row per snapshot and the final model; ``cells``: column -> its text of a point), the
    ``notes`` under it, and where its figure and report section went."""
    table = Table(title=title)
    for column in ("weights", "training minutes", "epochs", *cells):
        table.add_column(column, justify="left" if column == "weights" else "right")
    for p in result["points"]:
        texts = (text(p) for text in cells.values())
        table.add_row(p["snapshot"], f"{p['training_minutes']:.2f}", f"{p['epochs']:.2f}", *texts)
    console.print(table)
    for line in notes:
        console.print(line, markup=False)
    if result["figure"] is not None:
        console.print(f"figure: {folder / result['figure']}", markup=False)
        console.print(
            f"appended to {folder / 'metrics.jsonl'}; {folder / 'report.md'} has a '{section}' section", markup=False
        )


def _evaluate_snapshot_disentanglement(
    run_dir: Path, points: int, seed: int | None, no_write: bool, as_json: bool, figure_format=None
) -> None:
    """``eval --snapshots --disentanglement``: the five metrics against training time; see vaelab.experiments.curve."""
    from vaelab.eval.disentanglement import METRIC_LABELS
    from vaelab.experiments.curve import disentanglement_curve

    folder = _model_dir(run_dir, None)
    result = disentanglement_curve(
        folder,
        points=points,
        seed=seed,
        write=not no_write,
        figure_format=figure_format,
        say=lambda line: err_console.print(line, markup=False),
    )
    if as_json:
        print(json.dumps(result))
        return
    _print_curve(
        folder,
        result,
        f"{folder}: disentanglement of the posterior means on {result['dataset']} (seed {result['seed']}) against "
        "training time",
        {label: (lambda p, key=key: f"{p[key]:.3f}") for key, label in METRIC_LABELS.items()},
        "Disentanglement against training time",
        [],
    )


def _evaluate_disentanglement(
    run_dir: Path | None,
    pretrained: str | None,
    as_json: bool,
    seed: int | None,
    points: int,
    no_write: bool,
    figure_format=None,
) -> None:
    from vaelab.eval.disentanglement import Sizes
    from vaelab.eval.factor_eval import (
        disentanglement_lines,
        disentanglement_record,
        evaluate_disentanglement,
        normalised,
        require_factors,
        write_disentanglement_section,
    )
    from vaelab.model import load_model
    from vaelab.runs import RunDir
    from vaelab.train.trainer import run_dataset
    from vaelab.viz.disentanglement import write_disentanglement_figures

    folder = _model_dir(run_dir, pretrained)
    run = RunDir(folder)
    written = pretrained is None and not no_write
    with run.writing() if written and run.model_json.is_file() else nullcontext():
        if written:
            run.records()  # a metrics.jsonl it cannot append to is refused now, not after the evaluation
        model, config, meta = load_model(folder)
        dataset = run_dataset(config)  # no batches: a whole split binarised once would be wasted here
        require_factors(dataset, model)
        seed = config.train.seed if seed is None else seed
        name = pretrained or str(folder)
        result = {
            "model": name,
            "dataset": dataset.name,
            "seed": seed,
            **evaluate_disentanglement(model, dataset, seed=seed, sizes=Sizes.points(points)),
        }
        figures = []
        if written:
            figures = write_disentanglement_figures(
                model, run.figures, dataset.x_test[:10], normalised(result), result["factors"], True, figure_format
            )
            run.append(disentanglement_record(result, int(meta.get("epochs_trained", 0))))
            write_disentanglement_section(run.report, result)
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"{name}: disentanglement of its posterior means on {result['dataset']} (factors: "
        f"{', '.join(result['factors'])}; seed {seed})",
        markup=False,
    )
    for line in disentanglement_lines(result):
        console.print(line, markup=False)
    console.print(f"took {result['disentanglement_seconds']:.1f} s", markup=False)
    for path in figures:
        console.print(str(path), markup=False)
    if written:
        console.print(
            f"appended to {folder / 'metrics.jsonl'}; {folder / 'report.md'} has a Disentanglement section",
            markup=False,
        )


def _print_evaluation(name: str, result: dict, written_to: Path | None) -> None:
    from rich.text import Text

    from vaelab.eval.summary import COLLAPSE_WARNING, analysis_lines

    table = Table(title=f"{name} on the {result['dataset']} test set ({result['images']} images; per image, nats)")
    for column in ("total (-ELBO)", "reconstruction", "KL"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['total']:.2f}", f"{result['reconstruction']:.2f}", f"{result['kl']:.2f}")
    console.print(table)
    for line in analysis_lines(result):
        console.print(Text(line, style="bold red" if line.startswith(COLLAPSE_WARNING) else ""))
    if "nll" in result:
        stderr = "n/a" if result["nll_stderr"] is None else f"{result['nll_stderr']:.2f}"
        how = result.get("nll_note") or f"importance-weighted, k = {result['k']}"
        console.print(
            f"NLL ({how}): {result['nll']:.2f} ± {stderr} nats "
            f"per image (± one standard error over {result['images']} images), {result['bits_per_dim']:.4f} bits/dim"
        )
        if "likelihood_note" in result:
            console.print(Text(f"warning: {result['likelihood_note']}", style="bold yellow"))
    console.print(f"analysis took {result['analysis_seconds']:.1f} s", markup=False)
    if written_to is not None:
        console.print(
            f"appended to {written_to / 'metrics.jsonl'}; {written_to / 'report.md'} has an Evaluation section",
            markup=False,
        )


@app.command()
def reproduce(
    name: Annotated[
        str,
        typer.Argument(
            help="An experiment (seed-2d, burda-iwae, disent-btcvae, ...) or a group (seed, families, disent, ...); `vaelab list` names them all."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of run directories.")] = Path("runs"),
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Override the epochs (quick trials; not the study's setting).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a key of every experiment's config (quick trials); --set train.seed=S trains another "
            "seed into OUT/NAME-seedS.",
        ),
    ] = None,
    figure_kind: FormatOpt = FigureKind.png,
    dpi: DpiOpt = 110,
) -> None:
    """Train a published experiment (or reuse/resume its run), draw its figures, report against the paper."""
    from vaelab.experiments import GROUPS
    from vaelab.experiments.reproduce import reproduce as run

    try:
        results = run(
            name, out, epochs, console=err_console, overrides=set_, figure_format=_figure_format(figure_kind, dpi)
        )
    except KeyboardInterrupt:
        again = shlex.join(["vaelab", "reproduce", name, "--out", str(out)])
        raise Interrupted(f"interrupted; run `{again}` again to resume (with the same options)") from None
    table = Table(title=f"vaelab reproduce {name}: test set, nats per image")
    columns = ("experiment", "published", "ours", "-ELBO", "recon", "KL", "kNN-5", "silhouette", "active", "train")
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        published, test = r["published"], r["test"]
        trained = [row for row in r.get("training_log", []) if "ours" in row]
        if trained:  # a published training log (keras-example): its loss at our last epoch
            theirs = f"loss {trained[-1]['published']['loss']:.2f} (epoch {trained[-1]['epoch']})"
            ours = f"loss {trained[-1]['ours']['loss']:.2f}"
        elif "nll" in test:  # the literature compares log-likelihoods (Burda et al.)
            theirs = f"NLL {published['nll']:.2f}" if "nll" in published else ""
            ours = f"NLL {test['nll']:.2f} ± {test['nll_stderr']:.2f}"
        else:
            theirs = f"~{published['total']:.0f}" if "total" in published else ""
            ours = f"{test['total']:.2f}"
        table.add_row(
            r["experiment"],
            theirs,
            ours,
            f"{test['total']:.2f}",
            f"{test['reconstruction']:.2f}",
            f"{test['kl']:.2f}",
            f"{100 * r['analysis']['knn5_accuracy']:.1f}%",
            f"{r['analysis']['silhouette']:.3f}",
            str(r["analysis"]["active_units"]),
            f"{r['train_seconds'] / 60:.0f} min",
        )
    console.print(table)
    scored = [r for r in results if "disentanglement" in r]
    if scored:  # a data set with factors: the five metrics of the posterior means
        from vaelab.eval.disentanglement import METRIC_LABELS

        table = Table(title=f"vaelab reproduce {name}: disentanglement (docs/disentanglement.md)")
        for column in ("experiment", "seed", *METRIC_LABELS.values()):
            table.add_column(column, justify="right")
        for r in scored:
            scores = r["disentanglement"]
            table.add_row(r["experiment"], str(r["seed"]), *(f"{scores[key]:.3f}" for key in METRIC_LABELS))
        console.print(table)
    runs = ", ".join(str(out / r["run_dir"]) for r in results)
    console.print(f"runs: {runs} (each with figures/, report.md and results.json)", markup=False)
    if name in GROUPS:
        console.print(f"report: {out / 'report.md'}")


@app.command()
def datasets(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder searched first.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which data sets are available, and where each is read from."""
    from vaelab.data import describe_datasets

    rows = describe_datasets(data_dir)
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="data sets")
    for column in ("name", "location", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["location"], row["description"])
    console.print(table)


@app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="At most a minute: shorter windows, no compile or memory rows.")
    ] = False,
    memory: Annotated[
        bool | None, typer.Option(help="Measure peak memory of a real training run (default: yes, not with --quick).")
    ] = None,
    compile: Annotated[
        bool | None, typer.Option(help="Time fp32 training with train.compile = true (default: yes, not with --quick).")
    ] = None,
    threads: Annotated[int, typer.Option(help="Torch threads for the whole bench (0 = torch's default).")] = 0,
    latency: Annotated[
        bool,
        typer.Option(
            "--latency", help="Instead: batch-1 encode/decode latency (p50, p99) on one thread, fp32 and int8 ONNX."
        ),
    ] = False,
    models: Annotated[
        list[str] | None, typer.Option("--pretrained", help="With --latency: shipped models (default: seed-2d).")
    ] = None,
    families: Annotated[
        bool,
        typer.Option(
            "--families",
            help="Instead: every posterior, prior and likelihood family, the two-layer hierarchical models, and "
            "the cvae, gumbel and vqvae (first stage) families, beside a plain PyTorch loop of the same model.",
        ),
    ] = False,
) -> None:
    """Measure training/sampling/NLL throughput, as images/s and as a fraction of the matmul peak.

    At most about 3 minutes on any CPU, 1 with --quick (--families: 5, and 1.5 with --quick); progress goes to stderr,
    one line per measurement.
    What the CPU cannot do natively (bf16 without hardware support) or what would not fit in the time is
    skipped, and the table says why."""
    if latency and families:
        raise VaelabError("--latency and --families are two different benches; give one")
    if latency:
        from vaelab.cli.ship import bench_latency

        return bench_latency(models, quick, as_json)
    if models:
        raise VaelabError("--pretrained goes with --latency")
    from vaelab.bench import suite

    if families:
        from vaelab.bench import families as family_bench

        results, markdown = family_bench.run(quick=quick, threads=threads), family_bench.markdown
    else:
        results, markdown = suite.run(quick=quick, memory=memory, compile=compile, threads=threads), suite.markdown
    if as_json:
        print(suite.to_json(results))
    else:
        console.print(markdown(results))


@app.command("list")
def list_registered(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Every registered model family, architecture, posterior, prior, likelihood, activation, objective, data set,
    and the experiments `vaelab reproduce` runs."""
    from vaelab.core.registry import ALL
    from vaelab.data import describe_datasets
    from vaelab.experiments import describe_experiments

    listing = {kind: registry.describe() for kind, registry in ALL.items()}
    listing["datasets"] = [{"name": row["name"], "summary": row["description"]} for row in describe_datasets(None)]
    listing["experiments"] = [{"name": name, "summary": summary} for name, summary in describe_experiments()]
    if as_json:
        print(json.dumps(listing))
        return
    for kind, entries in listing.items():
        table = Table(title=kind)
        table.add_column("name")
        table.add_column("what it is")
        for entry in entries:
            table.add_row(entry["name"], entry["summary"])
        console.print(table)


@app.command()
def serve(
    run_dirs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Run directories to explore (with no RUN_DIR and no --pretrained: the shipped 2-D and 3-D models)."
        ),
    ] = None,
    pretrained: Annotated[
        list[str] | None,
        typer.Option(
            "--pretrained",
            help=f"A shipped model (repeatable): {', '.join(pretrained_names())}.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the explorer to this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    scatter_points: Annotated[
        int, typer.Option("--scatter-points", min=0, max=10_000, help="Test images in each model's latent scatter.")
    ] = 5000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Server processes sharing the port (e.g. 2 for many users on 2 cores).")
    ] = 1,
) -> None:
    """Explore latent spaces in the browser: scatters, live decoding under the pointer, 3-D views and
    cross-sections, a drawing pad, two models side by side; a JSON API (with its page at /docs) underneath."""
    from vaelab.serve import listen, load_models, url
    from vaelab.serve import serve as run
    from vaelab.serve.server import is_loopback, one_thread

    sock = listen(host, port)  # a port in use is refused before the models load
    try:
        one_thread()
        served = load_models(run_dirs or [], pretrained or [], scatter_points, say=err_console.print)
        address = url(sock)
        if not is_loopback(host):
            err_console.print(f"warning: listening on {host}: anyone who can reach this machine can use the explorer")
        print(f"serving {', '.join(served)} at {address} (API: {address}docs); Ctrl-C stops", flush=True)
        run(served, sock, workers)
    finally:
        sock.close()


from vaelab.cli import ship as _ship  # noqa: E402,F401  (registers export and encode)
