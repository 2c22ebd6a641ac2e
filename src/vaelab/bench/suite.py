"""``vaelab bench``: how fast vaelab trains, samples and evaluates on this machine, in one run.

Every rate is also given as a fraction of the machine's matrix-multiply peak measured in the same
run, because ratios survive a busy or different machine far better than absolute numbers.

How: the peak is the best of several 2048^3 products, measured at the start and at the end of the
run. Training rates are the best of five timing windows after warm-up steps, and the plain-PyTorch
reference is timed the same way (first, in the process as a plain script gets it). Best-of, as
``timeit`` does: on a shared machine interference only ever slows a window down (single products
and windows vary by +-20% here), so the best window is the closest to what the code itself costs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from vaelab.allocator import retain_freed_memory
from vaelab.bench import reference
from vaelab.bench.flops import training_flops_per_image
from vaelab.config import ModelConfig
from vaelab.data import Batches, load_dataset
from vaelab.model import build_vae, make_objective
from vaelab.train.step import TrainStep

MODELS: dict[str, tuple[ModelConfig, Any]] = {
    "conv (study, d=2)": (ModelConfig(arch="conv", latent_dim=2), lambda: reference.conv_vae(2)),
    "dense (study, d=2)": (ModelConfig(arch="dense", latent_dim=2), lambda: reference.mlp_vae([512, 256], 2)),
    "mlp (Burda, 784-200-200-50 tanh)": (
        ModelConfig(arch="mlp", hidden=[200, 200], activation="tanh", latent_dim=50),
        lambda: reference.mlp_vae([200, 200], 50, torch.nn.Tanh),
    ),
}


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and the matrix extensions that set its peaks (from /proc/cpuinfo).

    The peaks differ several-fold between machines that all call themselves "2 cores": AMX tiles
    run bf16 products ~6x faster than AVX-512 alone (measured here: 2,420 against 414 GFLOP/s), so
    a benchmark figure means little without them."""
    model, flags = platform.processor() or platform.machine(), set()
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
    extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {"model": model, "extensions": extensions}


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 9) -> float:
    """GFLOP/s of an n x n x n matrix product (the best of ``repeats`` after a warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def steady_rate(step, batches: Batches, steps: int, warmup: int, windows: int = 5) -> tuple[float, float]:
    """(images per second: the best of ``windows`` windows of ``steps // windows`` steps after
    ``warmup`` steps, seconds taken by the warm-up steps)."""
    xs = _forever(batches, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in range(warmup):
        step(next(xs))
    warmup_seconds = time.perf_counter() - start
    rates = []
    per_window = max(1, steps // windows)
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        for _ in range(per_window):
            x = next(xs)
            step(x)
            count += len(x)
        rates.append(count / (time.perf_counter() - start))
    return max(rates), warmup_seconds


def vaelab_train_step(
    model_config: ModelConfig, precision: str = "fp32", compile: bool = False
) -> tuple[torch.nn.Module, TrainStep]:
    """A seeded MNIST model of ``model_config`` and vaelab's ELBO training step for it, with Adam at
    1e-3 as the trainer builds them (`vaelab bench` and benchmarks/pythae_side_by_side.py time it)."""
    torch.manual_seed(0)
    model = build_vae(model_config, (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as the trainer's
    return model, TrainStep(model, make_objective("elbo"), optimizer, precision, compile=compile)


def vaelab_train_throughput(
    model_config: ModelConfig,
    images: torch.Tensor,
    steps: int,
    warmup: int,
    precision: str = "fp32",
    compile: bool = False,
) -> tuple[float, float, float]:
    """(images per second in steady state, training FLOPs per image, seconds of the warm-up steps,
    which include compiling) for vaelab's own step, as the trainer builds it."""
    model, step = vaelab_train_step(model_config, precision, compile)
    flops = training_flops_per_image(model, images[:2].float() / 255, lambda x: model.p_x(model.q_z(x).rsample()))
    rate, warmup_seconds = steady_rate(step, Batches(images, batch_size=128, training=True), steps, warmup)
    return rate, flops, warmup_seconds


def step_breakdown(
    model_config: ModelConfig, images: torch.Tensor, steps: int = 30, warmup: int = 5
) -> dict[str, float]:
    """Milliseconds per fp32 training step (batch 128) in the forward pass (the loss), the backward
    pass and the optimiser update, each the best of three windows of ``steps`` steps. Set beside
    the time the layers' FLOPs take at the peak, it says which part of a step holds a model back."""
    torch.manual_seed(0)
    model = build_vae(model_config, (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    objective = make_objective("elbo")
    generator = torch.Generator().manual_seed(0)
    batches = Batches(images, batch_size=128, training=True)
    xs = [x for _, x in zip(range(steps + warmup), _forever(batches, generator))]
    timings: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for window in range(4):  # the first window warms up
        spent = dict.fromkeys(timings, 0.0)
        for x in xs[:warmup] if window == 0 else xs[warmup:]:
            t0 = time.perf_counter()
            loss = objective(model, x).loss
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            t3 = time.perf_counter()
            for key, seconds in zip(timings, (t1 - t0, t2 - t1, t3 - t2)):
                spent[key] += seconds
        if window:
            for key in timings:
                timings[key].append(1000 * spent[key] / steps)
    return {key: min(values) for key, values in timings.items()}


def _forever(batches: Batches, generator: torch.Generator):
    while True:
        yield from batches.epoch(generator)


def sampling_throughput(model_config: ModelConfig, n: int = 10_000) -> float:
    model = build_vae(model_config, (1, 28, 28)).eval()
    model.sample(256)
    start = time.perf_counter()
    model.sample(n, generator=torch.Generator().manual_seed(0))
    return n / (time.perf_counter() - start)


def nll_throughput(model_config: ModelConfig, images: torch.Tensor, k: int = 5000) -> float | None:
    """Images per second of the k-sample importance-weighted NLL estimate, if that estimator is installed."""
    try:
        from vaelab.eval.nll import estimate_log_likelihood
    except ImportError:
        return None
    model = build_vae(model_config, (1, 28, 28)).eval()
    batches = Batches(images, batch_size=len(images), training=False)
    start = time.perf_counter()
    estimate_log_likelihood(model, batches, k=k)
    return len(images) / (time.perf_counter() - start)


def training_peak_memory_mb() -> float:
    """Peak resident memory of a real `vaelab train` process (1 epoch on 10,000 images, then the
    validation and test evaluations), in MB.

    Read as VmHWM from the child's /proc/self/status: ``getrusage``'s ``ru_maxrss`` would not do, as
    Linux carries it across ``exec`` from the forking process, here this benchmark's own (~2 GB).
    """
    with tempfile.TemporaryDirectory() as out:
        code = (
            "import sys, runpy; sys.argv = ['vaelab', 'train', '--epochs', '1', '--no-figures', '--out', "
            f"{os.path.join(out, 'run')!r}, '--set', 'data.train_limit=10000'];\n"
            "try:\n    runpy.run_module('vaelab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def run(quick: bool = False, memory: bool = True, compile: bool = True) -> dict[str, Any]:
    steps, warmup = (15, 5) if quick else (60, 10)
    started = time.perf_counter()
    images = load_dataset("mnist").x_train[:20_000]
    peaks_at_start = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": cpu_description(),
        },
        "training": {},
    }
    # the plain loop first, in the process as a plain script gets it (glibc's default malloc)
    reference_rates = {}
    for name, (_, make_reference) in MODELS.items():
        torch.manual_seed(0)
        reference_rates[name] = reference.train_throughput(make_reference(), images, steps, warmup)
    results["machine"]["malloc_tuned"] = retain_freed_memory()  # as `vaelab train` does
    rates: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, (config, _) in MODELS.items():
        rates[name] = {p: vaelab_train_throughput(config, images, steps, warmup, p) for p in ("fp32", "bf16")}
        if compile:  # train.compile = true
            rates[name]["fp32_compiled"] = vaelab_train_throughput(config, images, steps, warmup, "fp32", compile=True)
    breakdowns = {name: step_breakdown(config, images) for name, (config, _) in MODELS.items()}
    conv = MODELS["conv (study, d=2)"][0]
    results["sampling_images_per_second"] = sampling_throughput(conv)
    results["nll_k5000_images_per_second"] = nll_throughput(conv, images[: 8 if quick else 32])
    peaks_at_end = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    peak = {k: max(peaks_at_start[k], peaks_at_end[k]) for k in peaks_at_start}
    results["peak_gflops"] = peak
    results["peak_gflops_at_start"], results["peak_gflops_at_end"] = peaks_at_start, peaks_at_end
    for name, by_precision in rates.items():
        row: dict[str, Any] = {}
        for key, (rate, flops, warmup_seconds) in by_precision.items():
            gflops = rate * flops / 1e9
            row[key] = {
                "images_per_second": rate,
                "gflops": gflops,
                "fraction_of_peak": gflops / peak["bf16" if key == "bf16" else "fp32"],
                "warmup_seconds": warmup_seconds,
            }
            row["flops_per_image"] = flops
        row["step_ms"] = {
            **breakdowns[name],
            "flops_at_peak": 1000 * 128 * row["flops_per_image"] / (peak["fp32"] * 1e9),
        }
        row["reference_images_per_second"] = reference_rates[name]
        row["speedup_vs_reference"] = row["fp32"]["images_per_second"] / reference_rates[name]
        results["training"][name] = row
    if memory:
        results["training_peak_memory_mb"] = training_peak_memory_mb()
    results["bench_seconds"] = time.perf_counter() - started
    return results


def _cpu_line(cpu: Any) -> str:
    if not isinstance(cpu, dict):  # results written before the CPU was described
        return ""
    extensions = ", ".join(cpu["extensions"]) or "no AVX2"
    return f"{cpu['model']} ({extensions}), "


def markdown(results: dict[str, Any]) -> str:
    peak = results["peak_gflops"]
    start, end = results.get("peak_gflops_at_start"), results.get("peak_gflops_at_end")
    spread = (
        f" (best of the start and end measurements: fp32 {start['fp32']:.0f} / {end['fp32']:.0f}, "
        f"bf16 {start['bf16']:.0f} / {end['bf16']:.0f})"
        if start and end
        else ""
    )
    compiled = any("fp32_compiled" in row for row in results["training"].values())
    lines = [
        f"Machine: {_cpu_line(results['machine'].get('cpu'))}{results['machine']['threads']} threads, "
        f"torch {results['machine']['torch']}; "
        f"matrix-multiply peak fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s{spread}.",
        "",
        "| model (batch 128) | MFLOP/img | vaelab fp32 img/s | GFLOP/s | % of fp32 peak | vaelab bf16 img/s "
        "| % of bf16 peak | plain PyTorch img/s | speed-up |"
        + (" fp32 compiled img/s | % of fp32 peak |" if compiled else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if compiled else ""),
    ]
    for name, row in results["training"].items():
        f32, b16 = row["fp32"], row["bf16"]
        line = (
            f"| {name} | {row['flops_per_image'] / 1e6:.1f} | {f32['images_per_second']:.0f} | {f32['gflops']:.1f} "
            f"| {100 * f32['fraction_of_peak']:.0f}% | {b16['images_per_second']:.0f} | {100 * b16['fraction_of_peak']:.0f}% "
            f"| {row['reference_images_per_second']:.0f} | {row['speedup_vs_reference']:.2f}x |"
        )
        if "fp32_compiled" in row:
            c = row["fp32_compiled"]
            line += f" {c['images_per_second']:.0f} | {100 * c['fraction_of_peak']:.0f}% |"
        lines.append(line)
    if compiled:
        warm = ", ".join(
            f"{name.split(' ')[0]} {row['fp32_compiled']['warmup_seconds']:.0f} s"
            for name, row in results["training"].items()
        )
        lines += ["", f"- compiled (`train.compile = true`): first steps including compilation: {warm}"]
    if all("step_ms" in row for row in results["training"].values()):
        lines += [
            "",
            "Where a fp32 step's time goes (ms per batch of 128; 'at peak' is the layers' FLOPs at the fp32 peak):",
            "",
            "| model | forward (loss) | backward | Adam update | total | at peak |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in results["training"].items():
            ms = row["step_ms"]
            total = ms["forward"] + ms["backward"] + ms["optimizer"]
            lines.append(
                f"| {name} | {ms['forward']:.2f} | {ms['backward']:.2f} | {ms['optimizer']:.2f} | {total:.2f} "
                f"| {ms['flops_at_peak']:.2f} |"
            )
    lines += ["", f"- decoder sampling (conv, d=2): {results['sampling_images_per_second']:.0f} images/s"]
    nll = results.get("nll_k5000_images_per_second")
    lines.append(
        f"- importance-weighted NLL, k=5000 (conv, d=2): {nll:.2f} images/s"
        if nll
        else "- NLL estimator: not installed"
    )
    if "training_peak_memory_mb" in results:
        lines.append(f"- peak resident memory of `vaelab train` on MNIST: {results['training_peak_memory_mb']:.0f} MB")
    if "bench_seconds" in results:
        lines.append(f"- this benchmark took {results['bench_seconds']:.0f} s")
    return "\n".join(lines)


def to_json(results: dict[str, Any]) -> str:
    return json.dumps(results)
