"""Batch-1 latency and throughput of exported parts under onnxruntime, one thread.

Latency is the wall time of single ``session.run`` calls on one image (or one code): p50 and p99
over at least ``min_runs`` calls after a warm-up. Throughput is images per second at batch
``THROUGHPUT_BATCH``, best of a few windows. On a shared machine other processes inflate p99 first:
the figures name the CPU and say how busy it was.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vaelab.config import RunConfig
from vaelab.errors import VaelabError
from vaelab.export.onnxfile import export_part, session
from vaelab.export.ship import part_inputs
from vaelab.model.base import EXPORT_PARTS, LatentVariableModel

THROUGHPUT_BATCH = 256
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def cpu_description() -> str:
    """The CPU's model name and the extensions int8 and fp32 kernels use, as /proc/cpuinfo gives them."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    have = [f for f in _FLAGS if f in flags]
    return f"{model} ({', '.join(have) or 'no AVX2'}; {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f})"


def timings(run: Callable[[int], object], seconds: float, min_runs: int, warmup: int = 20) -> np.ndarray:
    """Seconds of each call ``run(i)``, for at least ``min_runs`` calls and ``seconds`` of wall time."""
    for i in range(warmup):
        run(i)
    out, start = [], time.perf_counter()
    while len(out) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        run(len(out))
        out.append(time.perf_counter() - t)
    return np.array(out)


def summarise(times: np.ndarray) -> dict[str, float]:
    return {
        "p50_us": float(np.percentile(times, 50) * 1e6),
        "p99_us": float(np.percentile(times, 99) * 1e6),
        "runs": len(times),
    }


def throughput(run_batch: Callable[[], object], batch: int, windows: int = 3, window: float = 0.5) -> float:
    """Images per second at ``batch`` images a call: the best of ``windows`` windows."""
    run_batch()
    best = 0.0
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while True:
            run_batch()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window:
                break
        best = max(best, calls * batch / elapsed)
    return best


def onnx_figures(path: Path, input_name: str, inputs: np.ndarray, seconds: float, min_runs: int) -> dict[str, float]:
    sess = session(path, threads=1)
    singles = [inputs[i : i + 1] for i in range(min(len(inputs), 64))]
    times = timings(lambda i: sess.run(None, {input_name: singles[i % len(singles)]}), seconds, min_runs)
    big = np.ascontiguousarray(np.resize(inputs, (THROUGHPUT_BATCH, *inputs.shape[1:])))
    rate = throughput(lambda: sess.run(None, {input_name: big}), THROUGHPUT_BATCH)
    return {**summarise(times), "images_per_s": rate}


@torch.no_grad()
def torch_figures(module: torch.nn.Module, inputs: np.ndarray, seconds: float, min_runs: int) -> dict[str, float]:
    """The same figures for PyTorch eager fp32 on one thread, for comparison."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        singles = [torch.from_numpy(inputs[i : i + 1]) for i in range(min(len(inputs), 64))]
        times = timings(lambda i: module(singles[i % len(singles)]), seconds, min_runs)
        big = torch.from_numpy(np.ascontiguousarray(np.resize(inputs, (THROUGHPUT_BATCH, *inputs.shape[1:]))))
        rate = throughput(lambda: module(big), THROUGHPUT_BATCH)
    finally:
        torch.set_num_threads(threads)
    return {**summarise(times), "images_per_s": rate}


def measure(
    model: LatentVariableModel,
    config: RunConfig,
    name: str,
    schemes: tuple[str, ...] = ("none", "int8", "int8-weights"),
    seconds: float = 2.0,
    min_runs: int = 300,
    folder: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per part and precision (PyTorch eager fp32, then each ONNX scheme): file size and
    batch-1 latency on one thread. Files go to ``folder`` (default: a temporary one)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaelab-latency-") as scratch:
        folder = Path(folder or scratch)
        for part in EXPORT_PARTS:
            try:
                exported = model.export_part(part)
            except VaelabError as err:  # a family without this part: say so in the table
                rows.append({"model": name, "part": part, "precision": "-", "skipped": str(err)})
                continue
            inputs = part_inputs(model, config, part)
            rows.append(
                {"model": name, "part": part, "precision": "torch fp32", "bytes": None}
                | torch_figures(exported.module, inputs, seconds, min_runs)
            )
            for scheme in schemes:
                path = folder / f"{name}-{part}-{'fp32' if scheme == 'none' else scheme}.onnx"
                done = export_part(model, part, path, inputs[:64], scheme, inputs, name)
                figures = onnx_figures(path, exported.input_name, inputs, seconds, min_runs)
                precision = "onnx fp32" if scheme == "none" else f"onnx {scheme}"
                rows.append({"model": name, "part": part, "precision": precision, "bytes": done.size} | figures)
                if progress:
                    progress(
                        f"{name} {part} {precision}: p50 {figures['p50_us']:.0f} us, p99 {figures['p99_us']:.0f} us"
                    )
    return rows


def markdown(rows: list[dict], cpu: str) -> str:
    lines = [
        f"Batch-1 latency, one thread (onnxruntime intra-op threads = 1; PyTorch eager with torch.set_num_threads(1)); CPU: {cpu}",
        "",
        "| model | part | precision | file bytes | p50 µs | p99 µs | images/s (batch 256) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['part']} | skipped: {r['skipped']} | | | | |")
            continue
        size = f"{r['bytes']:,}" if r.get("bytes") else "-"
        lines.append(
            f"| {r['model']} | {r['part']} | {r['precision']} | {size} | {r['p50_us']:.0f} | {r['p99_us']:.0f} "
            f"| {r['images_per_s']:,.0f} |"
        )
    return "\n".join(lines)
