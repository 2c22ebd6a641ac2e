"""``vaelab bench --families``: each registered posterior, prior and likelihood, and the two-layer
hierarchical models, trained by vaelab's own step beside a plain PyTorch loop of the same model
(``reference_families``), measured in one run.

Both sides are Burda et al.'s MLP (784-200-200-50 tanh) at batch 128 with Adam at 1e-3, with one piece
of the baseline (diagonal posterior, N(0, I) prior, Bernoulli likelihood) changed, and the data each
family is for: dynamically binarised MNIST for the Bernoulli models, grey levels for the continuous
Bernoulli and the Gaussians, the 256 levels (l / 255) for the logistic mixture. The hierarchy rows are
Burda et al.'s two stochastic layers (784-200-200-100, then 100-100-50 tanh, the generative side
mirrored) with bottom-up or ladder inference, and the bottom-up model with ``burda-iwae-2l``'s bound
and batch: the IWAE bound with k = 50 at batch 50 (at 128, a step's 6,400 samples would fill a --quick
window or more by themselves, leaving no steady rate to measure). Three rows are the families with
networks of their own, each as its experiment builds it: ``cvae`` (cvae-2d: the study's conv pair, 2-D z,
the label into both networks, grey levels), ``gumbel`` (gumbel-2d: the dense pair, 2 continuous
dimensions and one 10-way categorical relaxed by Gumbel-softmax, grey levels; its temperature held at
its floor, 0.5, on both sides, where vaelab's annealing would move it) and ``vqvae`` (vqvae-mnist's
first stage: the EMA codebook, straight-through, commitment, binarised; the transformer prior's stage
is not in the row). Every row runs eager fp32.

Timed as ``suite`` times its rows, the best of timing windows after a warm-up window, with one
difference: the two sides' windows alternate (plain, vaelab, vaelab, plain, ...), so that a load
that comes and goes on a shared machine falls on both alike (one side after the other, a busy
minute reads as a difference between them). glibc's malloc is tuned as ``vaelab train`` does before
either runs, so the plain loop gets it too; it does not measurably change MLP models (``allocator``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TextIO

import torch
from torch import nn

from vaelab.allocator import retain_freed_memory
from vaelab.bench import reference_families as plain
from vaelab.bench.suite import Plan, Progress, closing_lines, machine_description, vaelab_train_step
from vaelab.bench.timing import Budget, Window, best_rate, timed_windows
from vaelab.config import ModelConfig, ObjectiveConfig
from vaelab.data import Batches, load_dataset
from vaelab.errors import VaelabError
from vaelab.model import build_objective
from vaelab.model.gumbel.model import ANNEAL_RATE, TAU_MIN

BURDA = ModelConfig(arch="mlp", hidden=[200, 200], activation="tanh", latent_dim=50)
VAMP_PSEUDO_INPUTS = 100  # as the families experiments use (Tomczak & Welling: 500)


@dataclass(frozen=True)
class Family:
    kind: str  # posterior | prior | likelihood | baseline | hierarchy | conditional | discrete
    config: ModelConfig  # vaelab's model
    make_plain: Callable[[], nn.Module]
    binarize: str  # the data: dynamic (Bernoulli) | none (grey levels; the logistic mixture rounds them to levels)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # both sides' (the plain loss computes it)
    batch_size: int = 128
    labelled: bool = False  # both sides train on the images' labels too (the conditional VAE)
    prepare: Callable[[nn.Module], None] | None = None  # sets vaelab's built model up as the row needs it
    description: str = ""  # a family with networks of its own: what the row trains, said under the table
    shown: tuple[str, ...] = ()  # and the model keys its row shows (the others: what differs from Burda's MLP)


def _family(
    kind: str, make_plain, objective: ObjectiveConfig | None = None, batch_size: int = 128, **changes
) -> Family:
    config = replace(BURDA, hidden=list(BURDA.hidden), **changes)
    binarize = "dynamic" if config.likelihood == "bernoulli" else "none"
    return Family(kind, config, make_plain, binarize, objective or ObjectiveConfig(), batch_size)


def _two_layers(make_plain, objective: ObjectiveConfig | None = None, batch_size: int = 128, **changes) -> Family:
    """Burda et al.'s two stochastic layers on the one-layer model's x <-> z_1 networks, as burda-*-2l build them."""
    layers = {"stochastic_layers": [plain.Z1, plain.Z2], "layer_hidden": list(plain.LAYER_HIDDEN)}
    return _family("hierarchy", make_plain, objective, batch_size, family="hierarchical", **layers, **changes)


IWAE_2L = ObjectiveConfig(name="iwae", k=50)  # burda-iwae-2l's bound (its batch: 50)


def _temperature_at_its_floor(model: nn.Module) -> None:
    """The gumbel model past its annealing from the first step: tau = TAU_MIN all through, as the plain loop's."""
    model.steps.fill_(math.ceil(math.log(1 / TAU_MIN) / ANNEAL_RATE))


CVAE = Family(
    "conditional",
    ModelConfig(family="cvae"),  # seed-2d's model (the study's conv pair, 2-D z, N(0, I), Bernoulli), conditioned
    plain.ConditionalVAE,
    "none",
    labelled=True,
    description="cvae-2d's model: the study's conv pair, 2-D z, the one-hot label as 10 channels into the "
    "encoder and beside z into the decoder; grey levels and their labels",
    shown=("arch", "latent_dim", "classes", "posterior", "prior", "likelihood"),
)
GUMBEL = Family(
    "discrete",
    ModelConfig(family="gumbel", arch="dense", latent_dim=2),
    plain.GumbelSoftmaxVAE,
    "none",
    prepare=_temperature_at_its_floor,
    description=f"gumbel-2d's model: the dense pair (784-512-256 ReLU), 2 continuous dimensions and one "
    f"10-way categorical, Gumbel-softmax relaxed at a fixed temperature of {plain.TEMPERATURE} on both sides "
    "(vaelab's annealing floor); grey levels",
    shown=("arch", "latent_dim", "classes", "posterior", "prior", "likelihood"),
)
VQVAE = Family(
    "discrete",
    ModelConfig(family="vqvae", prior_epochs=0),
    plain.VQVAE,
    "dynamic",
    description="vqvae-mnist's first stage: a 7 x 7 grid of codes from 128 of 16 numbers, the EMA codebook "
    "(decay 0.99, dead codes restarted), straight-through, commitment 0.25; binarised. The transformer "
    "prior's stage is left out of the row (vaelab's model holds the prior frozen; its parameters are not "
    "counted and not updated)",
    shown=("codebook_size", "code_dim", "commitment", "codebook_decay", "prior_epochs", "likelihood"),
)


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
    "hierarchical bottom-up": _two_layers(plain.TwoLayerVAE),
    "hierarchical ladder": _two_layers(plain.LadderVAE, inference="ladder"),
    "hierarchical bottom-up iwae-50": _two_layers(
        lambda: plain.TwoLayerIWAE(IWAE_2L.k), objective=IWAE_2L, batch_size=50
    ),
    "cvae": CVAE,
    "gumbel": GUMBEL,
    "vqvae": VQVAE,
}

# two rates per family: windows of 0.8 s (0.3 s with --quick), the best of 8 (3) after a warm-up window;
# the budgets hold every row: 16 x (2 x 9 x 0.8 + 2) = 262 s, 16 x (2 x 4 x 0.3 + 2) = 70 s
FULL = Plan(budget=280.0, window=0.8, windows=8, peak=0.0, nll=0.0, compile=False, memory=False)
QUICK = Plan(budget=75.0, window=0.3, windows=3, peak=0.0, nll=0.0, compile=False, memory=False)
SETUP_SECONDS = 2.0  # building both models and their steps


def _labels_for(family: Family, labels: torch.Tensor | None) -> torch.Tensor | None:
    if not family.labelled:
        return None
    if labels is None:
        raise VaelabError(f"the {family.config.family} row trains on labelled images: pass their labels")
    return labels


def vaelab_family_step(family: Family, images: torch.Tensor, labels: torch.Tensor | None = None) -> Callable[[], int]:
    """One step of vaelab's fp32 training of ``family`` with its objective per call, as the trainer builds it
    (the batches' labels handed in for a labelled row)."""
    model, train_step = vaelab_train_step(family.config, objective=build_objective(family.objective))
    if family.prepare is not None:
        family.prepare(model)
    batches = Batches(
        images, _labels_for(family, labels), batch_size=family.batch_size, binarize=family.binarize, training=True
    )
    generator = torch.Generator().manual_seed(0)

    def forever():
        while True:
            yield from batches.batches(generator)

    xs = forever()

    def step() -> int:
        batch = next(xs)
        train_step(batch.x, labels=batch.y)
        return len(batch.x)

    return step


def plain_family_step(family: Family, images: torch.Tensor, labels: torch.Tensor | None = None) -> Callable[[], int]:
    """One step of the plain PyTorch loop of ``family`` per call."""
    torch.manual_seed(0)
    return plain.training_step(family.make_plain(), images, family.batch_size, _labels_for(family, labels))


def alternating_rates(steps: list[Callable[[], int]], window: float, windows: int) -> list[float]:
    """The best rate of each step function over ``windows`` windows, their windows alternating (the
    order reversed every round), after a warm-up window each."""
    for step in steps:
        timed_windows(step, window, 0, warmup=window, warmup_steps=2)
    timed: list[list[Window]] = [[] for _ in steps]
    for r in range(windows):
        for i in range(len(steps)) if r % 2 == 0 else reversed(range(len(steps))):
            timed[i] += timed_windows(steps[i], window, 1, warmup_steps=0)[1]
    return [best_rate(t) for t in timed]


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
    mnist = load_dataset("mnist")
    images, labels = mnist.x_train[:20_000], mnist.y_train[:20_000]
    malloc_tuned = retain_freed_memory()  # as `vaelab train` does
    rows: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, family in families.items():
        if not budget.fits(2 * plan.row + SETUP_SECONDS):
            skipped[name] = f"would not fit in the {plan.budget:.0f} s time budget"
            say.skip(name, skipped[name])
            continue
        rate, plain_rate = say.measure(
            f"{name}: vaelab and plain PyTorch fp32 training, alternating windows",
            lambda family=family: alternating_rates(
                [vaelab_family_step(family, images, labels), plain_family_step(family, images, labels)],
                plan.window,
                plan.windows,
            ),
            lambda rates: f"{_rate(rates[0])} and {_rate(rates[1])}",
        )
        rows[name] = {
            "kind": family.kind,
            "model": _shown(family),
            "description": family.description,
            "objective": {"name": family.objective.name, "k": family.objective.k},
            "batch_size": family.batch_size,
            "data": _data(family),
            "images_per_second": rate,
            "reference_images_per_second": plain_rate,
            "speedup_vs_reference": rate / plain_rate,
        }
    return {
        "machine": machine_description(malloc_tuned),
        "plan": {"quick": plan is QUICK, "budget": plan.budget, "window": plan.window, "windows": plan.windows},
        "families": rows,
        "skipped": skipped,
        "bench_seconds": time.perf_counter() - started,
    }


def _data(family: Family) -> str:
    if family.binarize == "dynamic":
        return "binarised"
    if family.labelled:
        return "grey levels + labels"
    return "8-bit levels" if family.config.likelihood == "logistic-mixture" else "grey levels"


_SHOWN = ("posterior", "prior", "prior_components", "likelihood", "likelihood_components", "flow_steps", "flow_hidden")


def _shown(family: Family) -> dict[str, Any]:
    """The slots every row on Burda et al.'s MLP names, and whatever else the row changes from the baseline
    (a family, its layers); for a family with networks of its own, its name and the keys it names."""
    config = asdict(family.config)
    if family.shown:
        return {k: config[k] for k in ("family", *family.shown)}
    baseline = asdict(BURDA)
    return {k: v for k, v in config.items() if k in _SHOWN or v != baseline[k]}


def markdown(results: dict[str, Any]) -> str:
    machine, cpu = results["machine"], results["machine"]["cpu"]
    extensions = ", ".join(cpu["extensions"]) or "no AVX2"
    rows = results["families"]
    models = "Burda et al.'s MLP (784-200-200-50 tanh), batch 128, fp32, Adam"
    if any(row["kind"] == "hierarchy" for row in rows.values()):
        models += "; the hierarchy rows: their two stochastic layers (784-200-200-100, 100-100-50 tanh, mirrored)"
    if any(row["description"] for row in rows.values()):
        models += "; the conditional and discrete rows: their own networks, under the table"
    bounds = [
        f"{name}: {row['objective']['name']}, k = {row['objective']['k']}, batch {row['batch_size']}"
        for name, row in rows.items()
        if row["objective"]["name"] != "elbo" or row["batch_size"] != 128
    ]
    if bounds:
        models += f" ({'; '.join(bounds)}; img/s counts images, not samples)"
    threads = f"{machine['threads']} thread{'s' * (machine['threads'] != 1)}"
    lines = [
        f"Machine: {cpu['model']} ({extensions}), {threads}, torch {machine['torch']}; "
        f"{models}; each rate the best of "
        f"{results['plan']['windows']} windows of {results['plan']['window']} s, the two sides' windows alternating.",
        "",
        "| family | kind | data | vaelab fp32 img/s | plain PyTorch img/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['kind']} | {row['data']} | {row['images_per_second']:.0f} "
            f"| {row['reference_images_per_second']:.0f} | {row['speedup_vs_reference']:.2f}x |"
        )
    described = [f"- {name}: {row['description']}." for name, row in rows.items() if row["description"]]
    if described:
        lines += ["", "The rows of the families with networks of their own, batch 128, fp32, Adam:", *described]
    return "\n".join(lines + closing_lines(results))
