"""The int8 report: for each shipped model, the fp32 and int8 ONNX files' size, batch-1 latency on one
thread, throughput, and quality (test -ELBO, kNN-5 accuracy of the encoder's means, Fréchet distance
of prior samples), all measured through onnxruntime on the files themselves.

    taskset -c 1 python benchmarks/int8_report.py --out docs/int8.md

Quality runs the model's own ELBO with its encoder and decoder networks computed by onnxruntime on
the exported files (``vaelab.export.onnx_networks``), with the evaluation's noise seed, so every
precision sees the same noise and the fp32 ONNX row must match PyTorch to ~1e-5 nats.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from vaelab import pretrained
from vaelab.data import Batches
from vaelab.eval.analysis import knn_accuracy, latent_means
from vaelab.eval.bound import evaluate_elbo, evaluation_seed
from vaelab.eval.frechet import sample_frechet_distance
from vaelab.export import export, onnx_networks
from vaelab.export.latency import cpu_description, markdown, measure
from vaelab.model import load_model
from vaelab.train import make_batches

SCHEMES = ("none", "int8", "int8-weights")


def quality(model, dataset, batches, seed: int, knn_train: int, frechet_samples: int) -> dict:
    test = batches["test"]
    train = batches["train"]
    result = {"neg_elbo": evaluate_elbo(model, test, seed=seed)["total"]}
    fixed = Batches(train.images[:knn_train], train.labels[:knn_train], 1000, "none", training=False)
    try:
        train_means, test_means = latent_means(model, fixed), latent_means(model, test)
        result["knn5"] = knn_accuracy(train_means, fixed.labels, test_means, test.labels, 5)
    except Exception as err:  # a model without an exportable encoder
        result["knn5"] = None
        result["knn5_note"] = str(err)
    result["frechet"] = sample_frechet_distance(model, dataset.x_test, frechet_samples, seed, dataset=dataset.name)[
        "frechet_distance"
    ]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/int8.md"))
    parser.add_argument("--models", nargs="*", default=pretrained.available())
    parser.add_argument("--knn-train", type=int, default=10_000)
    parser.add_argument("--frechet-samples", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    cpu_before = cpu_description()
    report = {"cpu": cpu_before, "models": {}}
    latency_rows = []
    for name in args.models:
        model, config, _ = load_model(pretrained.path(name))
        dataset, batches = make_batches(config)
        seed = evaluation_seed(config.train.seed)
        entry = {"torch fp32": quality(model, dataset, batches, seed, args.knn_train, args.frechet_samples)}
        with tempfile.TemporaryDirectory() as folder:
            for scheme in SCHEMES:
                written, _ = export(model, config, "both", Path(folder) / f"{name}-{scheme}.onnx", scheme, name)
                files = {w.part: w.path for w in written}
                with onnx_networks(model, files) if files else nullcontext():
                    row = quality(model, dataset, batches, seed, args.knn_train, args.frechet_samples)
                row["bytes"] = {w.part: w.size for w in written}
                entry["onnx fp32" if scheme == "none" else f"onnx {scheme}"] = row
                print(name, scheme, row, flush=True)
        latency_rows += measure(model, config, name, SCHEMES, seconds=args.seconds, min_runs=300, progress=print)
        report["models"][name] = entry
    report["latency"] = latency_rows
    report["cpu_after"] = cpu_description()
    report["seconds"] = round(time.time() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "| model | precision | encoder bytes | decoder bytes | test -ELBO (nats) | Δ vs torch | kNN-5 | Fréchet (MNIST classifier, not FID) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in report["models"].items():
        base = entry["torch fp32"]["neg_elbo"]
        for precision, row in entry.items():
            sizes = row.get("bytes", {})
            knn = "-" if row["knn5"] is None else f"{100 * row['knn5']:.2f}%"
            lines.append(
                f"| {name} | {precision} | {sizes.get('encoder', '-'):,} | {sizes.get('decoder', '-'):,} "
                f"| {row['neg_elbo']:.3f} | {row['neg_elbo'] - base:+.3f} | {knn} | {row['frechet']:.3f} |"
                if sizes
                else f"| {name} | {precision} | - | - | {row['neg_elbo']:.3f} | {row['neg_elbo'] - base:+.3f} | {knn} | {row['frechet']:.3f} |"
            )
    text = "\n".join(lines) + "\n\n" + markdown(latency_rows, cpu_before) + "\n"
    args.out.with_suffix(".tables.md").write_text(text)
    print(text)
    print(f"CPU at the end: {report['cpu_after']}; took {report['seconds']} s")


if __name__ == "__main__":
    main()
