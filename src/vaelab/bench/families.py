"""``vaelab bench --families``: each registered posterior, prior and likelihood trained by vaelab's own
step beside a plain PyTorch loop of the same model (``reference_families``), measured in one run.

Both sides are Burda et al.'s MLP (784-200-200-50 tanh) at batch 128 with Adam at 1e-3, with one piece
of the baseline (diagonal posterior, N(0, I) prior, Bernoulli likelihood) changed, and the data each
family is for: dynamically binarised MNIST for the Bernoulli models, grey levels for the continuous
Bernoulli and the Gaussians, the 256 levels (l / 255) for the logistic mixture. Timed as ``suite``
times its rows: the best of timing windows after a warm-up window, every plain loop first in the
process as a plain script gets it, then glibc's malloc tuned as ``vaelab train`` does, then vaelab's.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, TextIO

import torch

from vaelab.allocator import retain_freed_memory
from vaelab.bench import reference_families as plain
from vaelab.bench.suite import Plan, Progress, cpu_description, vaelab_train_step
from vaelab.bench.timing import Budget, best_rate, timed_windows
from vaelab.config import ModelConfig
from vaelab.data import Batches, load_dataset
from vaelab.errors import VaelabError

BURDA = ModelConfig(arch="mlp", hidden=[200, 200], activation="tanh", latent_dim=50)
VAMP_PSEUDO_INPUTS = 100  # as the families experiments use (Tomczak & Welling: 500)


@dataclass(frozen=True)
class Family:
    kind: str  # posterior | prior | likelihood | baseline
    config: ModelConfig  # vaelab's model
    make_plain: Callable[[], plain.PlainVAE]
    binarize: str  # the data: dynamic (Bernoulli) | none (grey levels; the logistic mixture rounds them to levels)


def _family(kind: str, make_plain, **changes) -> Family:
    config = replace(BURDA, hidden=list(BURDA.hidden), **changes)
    return Family(kind, config, make_plain, "dynamic" if config.likelihood == "bernoulli" else "none")


FAMILIES: dict[str, Family] = {
    "diagonal (baseline)": _family("baseline", plain.PlainVAE),
    "full": _family("posterior", plain.FullCovariance, posterior="full"),
    "iaf": _family("posterior", plain.IAF, posterior="iaf"),
    "learnable": _family("prior", plain.LearnablePrior, prior="learnable"),
    "mog": _family("prior", plain.MixturePrior, prior="mog", prior_components=10),
    "vamp": _family(
        "prior",
        lambda: plain.VampPrior(VAMP_PSEUDO_INPUTS),
        prior="vamp",
        prior_components=VAMP_PSEUDO_INPUTS,
    ),
    "continuous-bernoulli": _family(
        "likelihood", plain.ContinuousBernoulliLikelihood, likelihood="continuous-bernoulli"
    ),
    "gaussian-learned": _family("likelihood", plain.LearnedScaleGaussian, likelihood="gaussian-learned"),
    "gaussian-decoded": _family("likelihood", plain.DecodedGaussian, likelihood="gaussian-decoded"),
    "logistic-mixture": _family(
        "likelihood", plain.LogisticMixture, likelihood="logistic-mixture", likelihood_components=5
    ),
}

# two rates per family: windows of 0.8 s (0.3 s with --quick), the best of 5 (3) after a warm-up window
FULL = Plan(budget=170.0, window=0.8, windows=5, peak=0.0, nll=0.0, compile=False, memory=False)
QUICK = Plan(budget=50.0, window=0.3, windows=3, peak=0.0, nll=0.0, compile=False, memory=False)
SETUP_SECONDS = 1.0  # building a model and its step, per rate


def vaelab_family_throughput(family: Family, images: torch.Tensor, window: float, windows: int) -> float:
    """Images per second of vaelab's fp32 ELBO step for ``family``, as the trainer builds it."""
    _, train_step = vaelab_train_step(family.config)
    batches = Batches(images, batch_size=128, binarize=family.binarize, training=True)
    generator = torch.Generator().manual_seed(0)

    def forever():
        while True:
            yield from batches.epoch(generator)

    xs = forever()

    def step() -> int:
        x = next(xs)
        train_step(x)
        return len(x)

    _, timed = timed_windows(step, window, windows, warmup=window, warmup_steps=2)
    return best_rate(timed)


def plain_family_throughput(family: Family, images: torch.Tensor, window: float, windows: int) -> float:
    """Images per second of the plain PyTorch loop for ``family``, timed as vaelab's step is."""
    torch.manual_seed(0)
    step = plain.training_step(family.make_plain(), images)
    _, timed = timed_windows(step, window, windows, warmup=window, warmup_steps=2)
    return best_rate(timed)


def _rate(value: float) -> str:
    return f"{value:,.0f} img/s"


def run(
    quick: bool = False,
    threads: int = 0,
    progress: TextIO | None = None,
    plan: Plan | None = None,
    families: dict[str, Family] = FAMILIES,
) -> dict[str, Any]:
    """Both rates for every family that fits in ``plan``'s budget (FULL, or QUICK with ``quick``), on
    ``threads`` torch threads (0: torch's default); one progress line per measurement on ``progress``."""
    if threads < 0:
        raise VaelabError(f"--threads must be 0 (torch's default) or a number of threads, not {threads}")
    plan = plan or (QUICK if quick else FULL)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(plan, Progress(progress), families)
    finally:
        torch.set_num_threads(previous_threads)


def _run(plan: Plan, say: Progress, families: dict[str, Family]) -> dict[str, Any]:
    started = time.perf_counter()
    budget = Budget(plan.budget)
    images = load_dataset("mnist").x_train[:20_000]
    per_rate = plan.row + SETUP_SECONDS
    # a family is measured on both sides or not at all: its plain loop runs only if its vaelab rate
    # will still fit after every plain loop admitted so far
    admitted: list[str] = []
    skipped: dict[str, str] = {}
    for name in families:
        if budget.fits(2 * per_rate * (len(admitted) + 1)):
            admitted.append(name)
        else:
            skipped[name] = f"would not fit in the {plan.budget:.0f} s time budget"
            say.skip(name, skipped[name])
    # the plain loops first, in the process as a plain script gets it (glibc's default malloc)
    plain_rates = {
        name: say.measure(
            f"{name} plain PyTorch fp32 training",
            lambda family=families[name]: plain_family_throughput(family, images, plan.window, plan.windows),
            _rate,
        )
        for name in admitted
    }
    malloc_tuned = retain_freed_memory()  # as `vaelab train` does
    rows: dict[str, Any] = {}
    for name in admitted:
        family = families[name]
        rate = say.measure(
            f"{name} vaelab fp32 training",
            lambda family=family: vaelab_family_throughput(family, images, plan.window, plan.windows),
            _rate,
        )
        rows[name] = {
            "kind": family.kind,
            "model": {k: v for k, v in asdict(family.config).items() if k in _SHOWN},
            "data": _data(family),
            "images_per_second": rate,
            "reference_images_per_second": plain_rates[name],
            "speedup_vs_reference": rate / plain_rates[name],
        }
    return {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": cpu_description(),
            "malloc_tuned": malloc_tuned,
        },
        "plan": {"quick": plan is QUICK, "budget": plan.budget, "window": plan.window, "windows": plan.windows},
        "families": rows,
        "skipped": skipped,
        "bench_seconds": time.perf_counter() - started,
    }


def _data(family: Family) -> str:
    if family.binarize == "dynamic":
        return "binarised"
    return "8-bit levels" if family.config.likelihood == "logistic-mixture" else "grey levels"


_SHOWN = ("posterior", "prior", "prior_components", "likelihood", "likelihood_components", "flow_steps", "flow_hidden")


def markdown(results: dict[str, Any]) -> str:
    machine, cpu = results["machine"], results["machine"]["cpu"]
    extensions = ", ".join(cpu["extensions"]) or "no AVX2"
    lines = [
        f"Machine: {cpu['model']} ({extensions}), {machine['threads']} threads, torch {machine['torch']}; "
        "Burda et al.'s MLP (784-200-200-50 tanh), batch 128, fp32, Adam; best of "
        f"{results['plan']['windows']} windows of {results['plan']['window']} s per rate.",
        "",
        "| family | kind | data | vaelab fp32 img/s | plain PyTorch img/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["families"].items():
        lines.append(
            f"| {name} | {row['kind']} | {row['data']} | {row['images_per_second']:.0f} "
            f"| {row['reference_images_per_second']:.0f} | {row['speedup_vs_reference']:.2f}x |"
        )
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"- skipped: {name}: {reason}")
    if "bench_seconds" in results:
        lines.append(f"- this benchmark took {results['bench_seconds']:.0f} s")
    return "\n".join(lines)


def to_json(results: dict[str, Any]) -> str:
    return json.dumps(results)
