"""``vaelab bench``: how fast vaelab trains, samples and evaluates on this machine, in one run.

Every rate is also given as a fraction of the machine's matrix-multiply peak measured in the same
run, because ratios survive a busy or different machine far better than absolute numbers.

How: every rate is the best of a few timing windows of fixed wall time after a warm-up window, for
vaelab and for the plain-PyTorch reference alike (the reference first, in the process as a plain
script gets it). Best-of, as ``timeit`` does: on a shared machine interference only ever slows a
window down, so the best window is the closest to what the code itself costs. Windows of fixed
time make a slow CPU take fewer steps rather than more time; what would not fit in the run's time
budget (compiling, a real training run for its memory) is skipped and says so, and so is what the
CPU cannot do natively (bf16 without hardware support is emulated, far slower than fp32).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, TextIO

import torch

from vaelab.allocator import retain_freed_memory
from vaelab.bench import reference
from vaelab.bench.flops import training_flops_per_image
from vaelab.bench.timing import Budget, best_rate, timed_windows
from vaelab.config import ModelConfig, check_threads
from vaelab.core.platform import cpu_capabilities
from vaelab.data import Batches, load_dataset
from vaelab.model import build_model, build_vae, make_objective
from vaelab.train.step import TrainStep

MODELS: dict[str, tuple[ModelConfig, Any]] = {
    "conv (study, d=2)": (ModelConfig(arch="conv", latent_dim=2), lambda: reference.conv_vae(2)),
    "dense (study, d=2)": (ModelConfig(arch="dense", latent_dim=2), lambda: reference.mlp_vae([512, 256], 2)),
    "mlp (Burda, 784-200-200-50 tanh)": (
        ModelConfig(arch="mlp", hidden=[200, 200], activation="tanh", latent_dim=50),
        lambda: reference.mlp_vae([200, 200], 50, torch.nn.Tanh),
    ),
}


@dataclass(frozen=True)
class Plan:
    """How long the benchmark measures: a rate is the best of ``windows`` windows of ``window``
    seconds after a warm-up of one window; the optional parts run only if they fit in ``budget``."""

    budget: float  # seconds for the whole run
    window: float
    windows: int
    peak: float  # seconds per matrix-multiply peak
    nll: float  # seconds of importance-weighted NLL
    compile: bool  # also time fp32 training with train.compile = true
    memory: bool  # also measure the peak memory of a real `vaelab train`

    @property
    def row(self) -> float:
        """Seconds one training rate takes."""
        return (self.windows + 1) * self.window


# Budgets leave room for Python's start-up and the imports, within 3 minutes and 1 minute.
FULL = Plan(budget=160.0, window=0.8, windows=5, peak=2.0, nll=5.0, compile=True, memory=True)
QUICK = Plan(budget=50.0, window=0.3, windows=3, peak=1.0, nll=2.0, compile=False, memory=False)
# What compiling a model's step and a one-epoch `vaelab train` may cost, so that they start only if they fit.
COMPILE_SECONDS = {"conv": 40.0, "dense": 10.0, "mlp": 10.0}
MEMORY_SECONDS = 30.0


class Peak(NamedTuple):
    gflops: float
    n: int  # the matrix size measured


def cpu_description() -> dict[str, Any]:
    """The CPU's model name, the matrix extensions that set its peaks, and whether bf16 is native
    (the capability probe's view: AMX tiles run bf16 products several times faster than AVX-512)."""
    cpu = cpu_capabilities()
    return {"model": cpu.model, "extensions": cpu.extensions, "native_bf16": cpu.native_bf16, "amx": cpu.amx}


def machine_description(malloc_tuned: bool) -> dict[str, Any]:
    """What a benchmark's results record of the machine and the process that measured them."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),
        "malloc_tuned": malloc_tuned,
    }


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0, n: int = 2048) -> Peak:
    """GFLOP/s of an n x n x n matrix product: the best of the products that fit in ``seconds`` (at
    least three). n is halved (down to 256) while a product would take over half of ``seconds`` at
    the rate of a 512^3 probe, so a CPU that emulates ``dtype`` still finishes."""
    probe = torch.randn(512, 512, dtype=dtype)
    torch.mm(probe, probe)
    probe_seconds = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        torch.mm(probe, probe)
        probe_seconds = min(probe_seconds, time.perf_counter() - start)
    probe_rate = 2 * 512**3 / max(probe_seconds, 1e-9)
    while n > 256 and 2 * n**3 / probe_rate > seconds / 2:
        n //= 2
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return Peak(2 * n**3 / min(times) / 1e9, n)


def vaelab_train_step(
    model_config: ModelConfig, precision: str = "fp32", compile: bool = False, objective=None
) -> tuple[torch.nn.Module, TrainStep]:
    """A seeded MNIST model of ``model_config`` (any registered family) and vaelab's training step for
    it with ``objective`` (default: the ELBO), with Adam at 1e-3 as the trainer builds them (`vaelab
    bench` and benchmarks/pythae_side_by_side.py time it)."""
    torch.manual_seed(0)
    model = build_model(model_config, (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as the trainer's
    objective = objective or make_objective("elbo")
    return model, TrainStep(model, objective, optimizer, precision, compile=compile)


def vaelab_train_throughput(
    model_config: ModelConfig,
    images: torch.Tensor,
    window: float,
    windows: int,
    precision: str = "fp32",
    compile: bool = False,
) -> tuple[float, float, float]:
    """(images per second in steady state, training FLOPs per image, seconds of the warm-up steps,
    which include compiling) for vaelab's own step, as the trainer builds it."""
    model, train_step = vaelab_train_step(model_config, precision, compile)
    flops = training_flops_per_image(model, images[:2].float() / 255, lambda x: model.p_x(model.q_z(x).rsample()))
    xs = _forever(Batches(images, batch_size=128, training=True), torch.Generator().manual_seed(0))

    def step() -> int:
        x = next(xs)
        train_step(x)
        return len(x)

    warmup_seconds, timed = timed_windows(step, window, windows, warmup=window, warmup_steps=2)
    return best_rate(timed), flops, warmup_seconds


def reference_train_throughput(make_model: Callable[[], reference.ReferenceVAE], images, window, windows) -> float:
    """Images per second of the plain-PyTorch loop, timed as vaelab's own step is."""
    torch.manual_seed(0)
    step = reference.training_step(make_model(), images)
    _, timed = timed_windows(step, window, windows, warmup=window, warmup_steps=2)
    return best_rate(timed)


def step_breakdown(
    model_config: ModelConfig, images: torch.Tensor, window: float, windows: int = 3
) -> dict[str, float]:
    """Milliseconds per fp32 training step (batch 128) in the forward pass (the loss), the backward
    pass and the optimiser update, each the best of ``windows`` timing windows. Set beside the time
    the layers' FLOPs take at the peak, it says which part of a step holds a model back."""
    torch.manual_seed(0)
    model = build_vae(model_config, (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    objective = make_objective("elbo")
    xs = _forever(Batches(images, batch_size=128, training=True), torch.Generator().manual_seed(0))
    parts: list[tuple[float, float, float]] = []  # (forward, backward, optimizer) seconds of each step

    def step() -> int:
        x = next(xs)
        t0 = time.perf_counter()
        loss = objective(model, x).loss
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        parts.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return len(x)

    _, timed = timed_windows(step, window, windows, warmup=window, warmup_steps=2)
    first = len(parts) - sum(w.steps for w in timed)  # the warm-up's steps come first
    per_window = []
    for w in timed:
        steps = parts[first : first + w.steps]
        first += w.steps
        per_window.append([1000 * sum(column) / w.steps for column in zip(*steps)])
    keys = ("forward", "backward", "optimizer")
    return {key: min(ms[i] for ms in per_window) for i, key in enumerate(keys)}


def _forever(batches: Batches, generator: torch.Generator):
    while True:
        yield from batches.epoch(generator)


def sampling_throughput(model_config: ModelConfig, seconds: float, batch: int = 1000) -> float:
    """Images per second decoded from prior samples, ``batch`` at a time."""
    model = build_vae(model_config, (1, 28, 28)).eval()
    generator = torch.Generator().manual_seed(0)

    def step() -> int:
        model.sample(batch, generator=generator)
        return batch

    _, timed = timed_windows(step, seconds / 4, 3, warmup=seconds / 4)
    return best_rate(timed)


def nll_throughput(model_config: ModelConfig, images: torch.Tensor, seconds: float, k: int = 5000) -> float | None:
    """Images per second of the k-sample importance-weighted NLL estimate (one image per call, as
    many as fit in ``seconds``), if that estimator is installed."""
    try:
        from vaelab.eval.nll import estimate_log_likelihood
    except ImportError:
        return None
    model = build_vae(model_config, (1, 28, 28)).eval()
    singles = iter(images.split(1))

    def step() -> int:
        estimate_log_likelihood(model, Batches(next(singles), batch_size=1, training=False), k=k)
        return 1

    _, timed = timed_windows(step, seconds, 1, warmup_steps=0)  # one image is seconds of work: no warm-up
    return best_rate(timed)


def training_peak_memory_mb(threads: int, timeout: float) -> float:
    """Peak resident memory of a real `vaelab train` process (1 epoch on 10,000 images, then the
    validation and test evaluations, on ``threads`` threads), in MB; subprocess.TimeoutExpired
    after ``timeout`` seconds.

    Read as VmHWM from the child's /proc/self/status: ``getrusage``'s ``ru_maxrss`` would not do, as
    Linux carries it across ``exec`` from the forking process, here this benchmark's own.
    """
    with tempfile.TemporaryDirectory() as out:
        args = ["train", "--epochs", "1", "--no-figures", "--threads", str(threads)]
        args += ["--out", os.path.join(out, "run"), "--set", "data.train_limit=10000"]
        code = (
            f"import sys, runpy; sys.argv = ['vaelab', *{args!r}];\n"
            "try:\n    runpy.run_module('vaelab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("VmHWM")]
    if result.returncode or not lines:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`vaelab train` failed: {last}")
    return int(lines[0].split()[1]) / 1024


class Progress:
    """One line on stderr per measurement: what runs, then its result and the seconds it took."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr

    def measure(self, label: str, measurement: Callable[[], Any], result: Callable[[Any], str]) -> Any:
        self._write(f"bench: {label} ... ")
        start = time.perf_counter()
        try:
            value = measurement()
        except BaseException:
            self._write("stopped\n")
            raise
        seconds = time.perf_counter() - start
        self._write(f"{result(value)} ({seconds:.1f} s)\n" if seconds < 10 else f"{result(value)} ({seconds:.0f} s)\n")
        return value

    def skip(self, label: str, reason: str) -> None:
        self._write(f"bench: {label}: skipped: {reason}\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _rate(value: float) -> str:
    return f"{value:,.0f} img/s"


def run(
    quick: bool = False,
    memory: bool | None = None,
    compile: bool | None = None,
    threads: int = 0,
    progress: TextIO | None = None,
    plan: Plan | None = None,
    models: dict[str, tuple[ModelConfig, Any]] = MODELS,
) -> dict[str, Any]:
    """Measure everything the table shows, within ``plan``'s budget (FULL, or QUICK with ``quick``),
    on ``threads`` torch threads (0: torch's default); one progress line per measurement on
    ``progress`` (stderr). ``memory`` and ``compile`` override the plan's choice."""
    check_threads("--threads", threads)  # before any work; torch crashes on 100,000
    plan = plan or (QUICK if quick else FULL)
    memory = plan.memory if memory is None else memory
    compile = plan.compile if compile is None else compile
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(plan, memory, compile, Progress(progress), models)
    finally:
        torch.set_num_threads(previous_threads)


def _run(plan: Plan, memory: bool, compile: bool, say: Progress, models) -> dict[str, Any]:
    started = time.perf_counter()
    budget = Budget(plan.budget)
    cpu = cpu_capabilities()
    precisions = ["fp32", "bf16"] if cpu.native_bf16 else ["fp32"]
    skipped: dict[str, str] = {}
    if not cpu.native_bf16:
        skipped["bf16"] = cpu.why_no_bf16()
        say.skip("bf16 peak and training", skipped["bf16"])
    left_out = "--quick leaves it out" if plan is QUICK else "not asked for"
    images = load_dataset("mnist").x_train[:20_000]

    def peaks(when: str, n: dict[str, int] | None = None) -> dict[str, Peak]:
        return {
            p: say.measure(
                f"{p} matrix-multiply peak ({when})",
                lambda p=p: matmul_peak(
                    torch.float32 if p == "fp32" else torch.bfloat16, plan.peak, (n or {}).get(p, 2048)
                ),
                lambda peak: f"{peak.gflops:,.0f} GFLOP/s at n = {peak.n}",
            )
            for p in precisions
        }

    peaks_at_start = peaks("start")
    # the plain loop first, in the process as a plain script gets it (glibc's default malloc)
    reference_rates = {
        name: say.measure(
            f"{name} plain PyTorch fp32 training",
            lambda make=make: reference_train_throughput(make, images, plan.window, plan.windows),
            _rate,
        )
        for name, (_, make) in models.items()
    }
    malloc_tuned = retain_freed_memory()  # as `vaelab train` does
    rates: dict[str, dict[str, Any]] = {}
    for name, (config, _) in models.items():
        rates[name] = {
            p: say.measure(
                f"{name} vaelab {p} training",
                lambda p=p, config=config: vaelab_train_throughput(config, images, plan.window, plan.windows, p),
                lambda r: _rate(r[0]),
            )
            for p in precisions
        }
    breakdowns = {
        name: say.measure(
            f"{name} fp32 step breakdown",
            lambda config=config: step_breakdown(config, images, plan.window),
            lambda ms: f"{sum(ms.values()):.2f} ms per step",
        )
        for name, (config, _) in models.items()
    }
    first_name, (first, _) = next(iter(models.items()))
    sampling = say.measure(f"{first_name} decoder sampling", lambda: sampling_throughput(first, plan.window * 4), _rate)
    at_end = len(precisions) * (plan.peak + 1)  # the end peaks always run
    nll = None
    if budget.fits(plan.nll, reserved=at_end):
        nll = say.measure(
            f"{first_name} importance-weighted NLL, k=5000",
            lambda: nll_throughput(first, images, plan.nll),
            lambda r: "not installed" if r is None else f"{r:.2f} img/s",
        )
    else:
        skipped["NLL"] = f"would not fit in the {plan.budget:.0f} s time budget"
        say.skip("NLL", skipped["NLL"])
    peak_memory = None
    if not memory:
        skipped["peak memory"] = left_out
    elif budget.fits(MEMORY_SECONDS, reserved=at_end):
        try:
            peak_memory = say.measure(
                "peak memory of `vaelab train` (1 epoch, 10,000 images)",
                lambda: training_peak_memory_mb(
                    torch.get_num_threads(), min(budget.left() - at_end, 2 * MEMORY_SECONDS)
                ),
                lambda mb: f"{mb:,.0f} MB",
            )
        except subprocess.TimeoutExpired:
            skipped["peak memory"] = f"`vaelab train` did not finish within {2 * MEMORY_SECONDS:.0f} s"
        except RuntimeError as err:
            skipped["peak memory"] = str(err)
        if "peak memory" in skipped:
            say.skip("peak memory", skipped["peak memory"])
    else:
        skipped["peak memory"] = f"would not fit in the {plan.budget:.0f} s time budget"
        say.skip("peak memory", skipped["peak memory"])
    compiled: dict[str, Any] = {}
    # the cheapest to compile first, so that a short budget still measures some
    for name, (config, _) in sorted(models.items(), key=lambda item: COMPILE_SECONDS.get(item[1][0].arch, 40.0)):
        label = f"{name} vaelab fp32 compiled training"
        if not compile:
            skipped.setdefault("fp32 compiled", left_out)
        elif budget.fits(COMPILE_SECONDS.get(config.arch, 40.0) + plan.row, reserved=at_end):
            compiled[name] = say.measure(
                label,
                lambda config=config: vaelab_train_throughput(config, images, plan.window, plan.windows, compile=True),
                lambda r: f"{_rate(r[0])}, compiling {r[2]:.0f} s",
            )
        else:
            skipped[f"fp32 compiled: {name}"] = f"would not fit in the {plan.budget:.0f} s time budget"
            say.skip(label, skipped[f"fp32 compiled: {name}"])
    peaks_at_end = peaks("end", {p: peak.n for p, peak in peaks_at_start.items()})

    peak = {p: max(peaks_at_start[p].gflops, peaks_at_end[p].gflops) for p in precisions}
    results: dict[str, Any] = {
        "machine": machine_description(malloc_tuned),
        "plan": {"quick": plan is QUICK, **asdict(plan)},
        "peak_gflops": peak,
        "peak_gflops_at_start": {p: v.gflops for p, v in peaks_at_start.items()},
        "peak_gflops_at_end": {p: v.gflops for p, v in peaks_at_end.items()},
        "peak_matmul_n": {p: min(v.n, peaks_at_end[p].n) for p, v in peaks_at_start.items()},
        "training": {},
        "sampling_images_per_second": sampling,
        "nll_k5000_images_per_second": nll,
        "skipped": skipped,
    }
    for name in models:
        measured = {**rates[name], **({"fp32_compiled": compiled[name]} if name in compiled else {})}
        row: dict[str, Any] = {}
        for key, (rate, flops, warmup_seconds) in measured.items():
            gflops = rate * flops / 1e9
            row[key] = {
                "images_per_second": rate,
                "gflops": gflops,
                "fraction_of_peak": gflops / peak["bf16" if key == "bf16" else "fp32"],
                "warmup_seconds": warmup_seconds,
            }
            row["flops_per_image"] = flops
        reasons = {
            "bf16": skipped.get("bf16"),
            "fp32_compiled": skipped.get("fp32 compiled") or skipped.get(f"fp32 compiled: {name}"),
        }
        for key, reason in reasons.items():
            if key not in row and reason:
                row[key] = {"skipped": reason}
        row["step_ms"] = {
            **breakdowns[name],
            "flops_at_peak": 1000 * 128 * row["flops_per_image"] / (peak["fp32"] * 1e9),
        }
        row["reference_images_per_second"] = reference_rates[name]
        row["speedup_vs_reference"] = row["fp32"]["images_per_second"] / reference_rates[name]
        results["training"][name] = row
    if peak_memory is not None:
        results["training_peak_memory_mb"] = peak_memory
    results["bench_seconds"] = time.perf_counter() - started
    return results


def _cpu_line(cpu: Any) -> str:
    if not isinstance(cpu, dict):  # results written before the CPU was described
        return ""
    extensions = ", ".join(cpu["extensions"]) or "no AVX2"
    return f"{cpu['model']} ({extensions}), "


def _measured(entry: Any) -> bool:
    return isinstance(entry, dict) and "images_per_second" in entry


def markdown(results: dict[str, Any]) -> str:
    peak = results["peak_gflops"]
    start, end = results.get("peak_gflops_at_start"), results.get("peak_gflops_at_end")
    spread = (
        " (best of the start and end measurements: "
        + ", ".join(f"{p} {start[p]:.0f} / {end[p]:.0f}" for p in peak)
        + ")"
        if start and end
        else ""
    )
    sizes = results.get("peak_matmul_n", {})
    peaks = ", ".join(f"{p} {peak[p]:.0f} GFLOP/s" + (f" (n = {sizes[p]})" if p in sizes else "") for p in peak)
    compiled = any(_measured(row.get("fp32_compiled")) for row in results["training"].values())
    threads = results["machine"]["threads"]
    lines = [
        f"Machine: {_cpu_line(results['machine'].get('cpu'))}{threads} thread{'s' * (threads != 1)}, "
        f"torch {results['machine']['torch']}; matrix-multiply peak {peaks}{spread}.",
        "",
        "| model (batch 128) | MFLOP/img | vaelab fp32 img/s | GFLOP/s | % of fp32 peak | vaelab bf16 img/s "
        "| % of bf16 peak | plain PyTorch img/s | speed-up |"
        + (" fp32 compiled img/s | % of fp32 peak |" if compiled else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if compiled else ""),
    ]
    for name, row in results["training"].items():
        f32, b16 = row["fp32"], row.get("bf16")
        bf16_cells = (
            f"{b16['images_per_second']:.0f} | {100 * b16['fraction_of_peak']:.0f}%"
            if _measured(b16)
            else "skipped | –"
        )
        line = (
            f"| {name} | {row['flops_per_image'] / 1e6:.1f} | {f32['images_per_second']:.0f} | {f32['gflops']:.1f} "
            f"| {100 * f32['fraction_of_peak']:.0f}% | {bf16_cells} "
            f"| {row['reference_images_per_second']:.0f} | {row['speedup_vs_reference']:.2f}x |"
        )
        if compiled:
            c = row.get("fp32_compiled")
            line += (
                f" {c['images_per_second']:.0f} | {100 * c['fraction_of_peak']:.0f}% |"
                if _measured(c)
                else " skipped | – |"
            )
        lines.append(line)
    if compiled:
        warm = ", ".join(
            f"{name.split(' ')[0]} {row['fp32_compiled']['warmup_seconds']:.0f} s"
            for name, row in results["training"].items()
            if _measured(row.get("fp32_compiled"))
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
    first = next(iter(results["training"]), "conv (study, d=2)")
    lines += ["", f"- decoder sampling ({first}): {results['sampling_images_per_second']:.0f} images/s"]
    nll = results.get("nll_k5000_images_per_second")
    if nll:
        lines.append(f"- importance-weighted NLL, k=5000 ({first}): {nll:.2f} images/s")
    elif "NLL" not in results.get("skipped", {}):
        lines.append("- NLL estimator: not installed")
    if "training_peak_memory_mb" in results:
        lines.append(f"- peak resident memory of `vaelab train` on MNIST: {results['training_peak_memory_mb']:.0f} MB")
    return "\n".join(lines + closing_lines(results))


def closing_lines(results: dict[str, Any]) -> list[str]:
    """What a benchmark's table ends with: what it skipped and why, and how long it took."""
    lines = [f"- skipped: {what}: {reason}" for what, reason in results.get("skipped", {}).items()]
    if "bench_seconds" in results:
        lines.append(f"- this benchmark took {results['bench_seconds']:.0f} s")
    return lines


def to_json(results: dict[str, Any]) -> str:
    return json.dumps(results)
