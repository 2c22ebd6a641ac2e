"""The importance-weighted estimate of the test log-likelihood (Burda et al. 2016, Appendix C).

For each image,

    log p(x) ~= log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),    z_i ~ q(z | x),

the k-sample IWAE bound. It is a lower bound on log p(x) in expectation, increases with k and
converges to log p(x); k = 5000 is the literature's number for MNIST. The weights are the model's
own ``log_weights`` (the code the IWAE objective trains with), so any family that has them gets an
NLL. The proposal is the posterior family's ``proposal()``: with the study's sampling mode
(``prior_sampling = "study"``) that is the diagonal Gaussian whose ``log_prob`` enters the weights,
so the estimate stays a valid importance-sampling estimate of the same p(x).

Memory is bounded for any k: images are evaluated a few at a time, a block of ``NOISE_BLOCK``
samples each, within ``max_elements`` decoder outputs, combined with a running log-sum-exp. Every
image draws its noise from its own generator, seeded by the seed and the image's position, so the
estimate depends only on the seed, k and the images in their order, not on any batching.

A family whose posterior is deterministic (vqvae: one-hot codes) has no importance weights to average:
every sample of q is the same code, so IWAE-k equals log p(x | c(x)) + log p(c(x)) for every k. Such a
family offers that bound (``log_likelihood_bound``) and it is reported with ``k = 1`` and a note saying so.

Which images: use ``Batches(..., binarize=config.data.binarize, training=False)``; with dynamic
binarisation that binarises the test set once with a fixed seed (the convention of Burda et al.),
so numbers are comparable across runs and with the literature.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch

from vaelab.allocator import retain_freed_memory
from vaelab.data.batches import Batches
from vaelab.errors import VaelabError
from vaelab.model.base import Context, LatentVariableModel

# Decoder outputs (samples x images x pixels) per call of the model: ~2,500 MNIST decodes, which
# measured as fast per decode as any other size for the conv decoder on CPU (500 to 4,000 decodes
# were level, 8,000 slower) and keeps a call's activations to a few hundred MB.
DEFAULT_MAX_ELEMENTS = 2_000_000
# Samples per call of the model, for every image: each image's noise stream is drawn in these blocks,
# so the estimate does not depend on how images are grouped into calls.
NOISE_BLOCK = 64
# Images taken from the caller's batches at a time (progress is reported after each).
IMAGES_PER_PASS = 100
# what a caller reports of an estimate (k: the samples it used, 1 for a one-hot posterior whatever was asked)
REPORTED_KEYS = ("nll", "nll_stderr", "bits_per_dim", "k", "nll_note", "likelihood_note")
GREY_LEVEL_BERNOULLI = (
    "not a log-likelihood: a Bernoulli likelihood on grey-level images is a cross-entropy (its mass sums to one "
    "over binary images only), so this NLL and its bits/dim are comparable with no published number; train with "
    "--likelihood continuous-bernoulli for a normalised density on grey levels"
)


def _rechunk(blocks: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Regroup tensors along dim 0 into chunks of ``size`` rows (the last may be shorter)."""
    pending: list[torch.Tensor] = []
    count = 0
    for block in blocks:
        pending.append(block)
        count += len(block)
        while count >= size:
            joined = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield joined[:size]
            rest = joined[size:]
            pending, count = ([rest], len(rest)) if len(rest) else ([], 0)
    if pending:
        yield torch.cat(pending)


def _images_per_call(outputs_per_image: int, max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """How many images to evaluate together so that a block of samples stays within ``max_elements``."""
    return max(1, max_elements // max(1, NOISE_BLOCK * outputs_per_image))


def image_generators(seed: int, first: int, n: int) -> list[torch.Generator]:
    """One noise stream per image, from the seed and the image's position in the evaluated set."""
    return [torch.Generator().manual_seed((seed * 1_000_003 + first + i) % 2**63) for i in range(n)]


def _check_counts(k: int) -> None:
    if k < 1:
        raise VaelabError(f"the number of importance samples k must be >= 1, got {k}")


@torch.no_grad()
def iwae_bound(
    model: LatentVariableModel,
    x: torch.Tensor,
    k: int,
    seed: int = 0,
    first_index: int = 0,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The k-sample IWAE bound log (1/k) sum_i p(x, z_i) / q(z_i | x) per image, in nats, through the
    model's own importance log-weights (the code the IWAE objective trains with).

    Returns a float64 tensor of shape B. Image ``i`` of ``x`` draws its noise from its own stream,
    seeded by ``seed`` and ``first_index + i``, in blocks of ``NOISE_BLOCK`` samples; images are
    evaluated a few at a time (within ``max_elements`` decoder outputs) with a running log-sum-exp
    over blocks. Uses the model as it is (put it in eval mode). ``labels`` (one per image) reach a
    family that conditions on them (cvae: the bound is then on log p(x | y)).
    """
    _check_counts(k)
    if not model.can("log_weights"):
        raise model._unsupported("importance weights, so no importance-sampled NLL")
    per_call = _images_per_call(x[0].numel(), max_elements)
    bounds = []
    for start in range(0, len(x), per_call):
        images = x[start : start + per_call]
        generators = image_generators(seed, first_index + start, len(images))
        ctx = Context(generators=generators, labels=None if labels is None else labels[start : start + per_call])
        total = None
        for block_start in range(0, k, NOISE_BLOCK):
            block = min(NOISE_BLOCK, k - block_start)
            log_w = model.log_weights(images, block, ctx).log_w
            part = torch.logsumexp(log_w.double(), 0)
            total = part if total is None else torch.logaddexp(total, part)
        bounds.append(total - math.log(k))
    return torch.cat(bounds)


def _model_device(model: torch.nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def estimate_log_likelihood(
    model: LatentVariableModel,
    batches: Batches | Iterable[torch.Tensor],
    k: int = 5000,
    seed: int = 0,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    return_per_image: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float | int | list[float]]:
    """The test negative log-likelihood by importance sampling with k samples, per image.

    ``batches`` is a :class:`~vaelab.data.Batches` (its images, in order, via ``epoch(shuffle=False)``)
    or any iterable of image tensors; they are evaluated ``IMAGES_PER_PASS`` at a time, and
    ``progress`` (if given) is called with the number of images done after each pass. Returns

    * ``nll``: -mean_x log p(x), nats per image (the IWAE-k estimate);
    * ``nll_stderr``: the standard error of that mean across images, std / sqrt(n) (NaN for one
      image); it measures the test-set sampling error, which dominates the Monte Carlo error at
      k = 5000;
    * ``bits_per_dim``: nll / (pixels * ln 2);
    * ``k`` and ``images`` (n);
    * ``per_image``: -log p(x) of each image, if ``return_per_image``.

    Deterministic: each image's noise comes from its own generator, seeded by ``seed`` and the
    image's position (the caller's RNG is left untouched). The model runs in eval mode under no_grad, and its train/eval mode is restored.
    """
    _check_counts(k)
    deterministic = not model.can("log_weights") and model.can("log_likelihood_bound")
    if deterministic:
        k = 1  # every sample of a one-hot posterior is the same code
    retain_freed_memory()  # each chunk's decoder activations reuse the previous chunk's memory
    iterable = batches.epoch(shuffle=False) if isinstance(batches, Batches) else batches
    labels = batches.labels if isinstance(batches, Batches) else None  # in the images' order
    device = _model_device(model)
    values: list[torch.Tensor] = []
    pixels = 0
    grey = False
    was_training = model.training
    model.eval()
    try:
        done = 0
        for x in _rechunk(iterable, IMAGES_PER_PASS):
            x = x.to(device)
            grey = grey or bool(((x != 0) & (x != 1)).any())
            pixels = x[0].numel()
            y = None if labels is None else labels[done : done + len(x)].to(device)
            if deterministic:
                bound = model.log_likelihood_bound(x, Context(labels=y)).double()
            else:
                bound = iwae_bound(model, x, k, seed, done, max_elements, y)
            values.append(bound.cpu())
            done += len(x)
            if progress is not None:
                progress(done)
    finally:
        model.train(was_training)
    if not values:
        raise VaelabError("no images to evaluate: the batches are empty")
    nll_per_image = -torch.cat(values)
    n = len(nll_per_image)
    nll = nll_per_image.mean().item()
    stderr = (nll_per_image.std() / math.sqrt(n)).item() if n > 1 else float("nan")
    result: dict[str, float | int | list[float]] = {
        "nll": nll,
        "nll_stderr": stderr,
        "bits_per_dim": nll / (pixels * math.log(2)),
        "k": k,
        "images": n,
    }
    if deterministic:
        result["nll_note"] = (
            "an upper bound, -log p(x | c(x)) - log p(c(x)): the posterior is one-hot, so IWAE-k equals it for every k"
        )
    if grey and getattr(getattr(model, "likelihood", None), "binary_images_only", False):
        result["likelihood_note"] = GREY_LEVEL_BERNOULLI
    if return_per_image:
        result["per_image"] = nll_per_image.tolist()
    return result
