"""Typer commands that ship a model: export (ONNX, int8) and encode (features), and bench --latency."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vaelab.cli.app import PretrainedOpt, RunDirArg, _model_dir, app, console, err_console
from vaelab.errors import VaelabError

Part = Enum("Part", {p: p for p in ("encoder", "decoder", "both")}, type=str)
Format = Enum("Format", {"onnx": "onnx"}, type=str)
Quantize = Enum("Quantize", {q: q for q in ("none", "int8", "int8-weights")}, type=str)
Split = Enum("Split", {s: s for s in ("test", "train")}, type=str)


def _load(run_dir: Path | None, pretrained: str | None):
    from vaelab.model import load_model

    folder = _model_dir(run_dir, pretrained)
    model, config, _ = load_model(folder)
    return model, config, pretrained or str(folder)


@app.command()
def export(
    run_dir: RunDirArg = None,
    pretrained: PretrainedOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The file to write (both parts: OUT-encoder, OUT-decoder).")
    ] = Path("model.onnx"),
    part: Annotated[
        Part, typer.Option(help="encoder (images -> mean, scale), decoder (z -> mean image), or both.")
    ] = Part.decoder,
    format_: Annotated[
        Format, typer.Option("--format", help="onnx (torch's exporter, dynamic batch size).")
    ] = Format.onnx,
    quantize: Annotated[
        Quantize,
        typer.Option(
            help="int8: weights and activations (static with calibration for convolutions, dynamic for dense layers); "
            "int8-weights: int8 weights, fp32 activations."
        ),
    ] = Quantize.none,
) -> None:
    """Export a model's encoder and/or decoder as ONNX, checked with onnxruntime against PyTorch as it is written.

    An fp32 file whose outputs differ from PyTorch's beyond 1e-4 + 1e-4 * |value| is not written (exit 2);
    an int8 file's differences are printed (its cost in nats: docs/int8.md)."""
    from vaelab.export import export as export_model

    model, config, source = _load(run_dir, pretrained)
    written, skipped = export_model(model, config, part.value, out, quantize.value, source)
    for line in skipped:
        err_console.print(line, markup=False)
    for result in written:
        console.print(result.summary(), markup=False)


@app.command()
def encode(
    run_dir: RunDirArg = None,
    pretrained: PretrainedOpt = None,
    dataset: Annotated[str | None, typer.Option(help="Data set to encode (default: the model's own).")] = None,
    split: Annotated[Split, typer.Option(help="test or train (the whole official split).")] = Split.test,
    out: Annotated[
        Path, typer.Option("--out", "-o", help=".npy: N x 2 x d (means, scales); .npz: arrays mean, scale, label.")
    ] = Path("features.npy"),
) -> None:
    """The encoder as a feature extractor: the posterior's mean and scale for every image of a split."""
    import numpy as np

    from vaelab.export import encode_split
    from vaelab.io import atomic_write

    if out.suffix not in (".npy", ".npz"):
        raise VaelabError(f"--out {out}: give a .npy or .npz file name")
    if out.is_dir():
        raise VaelabError(f"cannot write {out}: it is a directory")
    model, config, _ = _load(run_dir, pretrained)
    means, scales, labels = encode_split(model, config, dataset, split.value)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            if out.suffix == ".npz":
                arrays = {"mean": means, "scale": scales} | ({} if labels is None else {"label": labels})
                np.savez(handle, **arrays)
            else:
                np.save(handle, np.stack([means, scales], axis=1))

    atomic_write(out, write)
    console.print(f"wrote {out}: {len(means):,} images x {means.shape[1]} dimensions (means and scales)", markup=False)


def bench_latency(models: list[str] | None, quick: bool, as_json: bool) -> None:
    """``vaelab bench --latency``: batch-1 encode / decode latency of shipped models, fp32 and int8, one thread."""
    import json

    from vaelab.export.latency import cpu_description, markdown, measure
    from vaelab.model import load_model
    from vaelab.pretrained import path

    rows = []
    for name in models or ["seed-2d"]:
        model, config, _ = load_model(path(name))
        rows += measure(
            model,
            config,
            name,
            seconds=0.5 if quick else 2.0,
            min_runs=100 if quick else 300,
            progress=lambda line: err_console.print(line, markup=False),
        )
    cpu = cpu_description()
    if as_json:
        print(json.dumps({"cpu": cpu, "rows": rows}))
    else:
        console.print(markdown(rows, cpu), markup=False)
