"""The importance-weighted estimate of the test log-likelihood (Burda et al. 2016, Appendix C).

For each image,

    log p(x) ~= log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),    z_i ~ q(z | x),

the k-sample IWAE bound. It is a lower bound on log p(x) in expectation, increases with k and
converges to log p(x); k = 5000 is the literature's number for MNIST. The proposal is the encoder's
diagonal Gaussian N(mu, diag sigma^2), sampled with ``q.sample``: with the study's sampling mode
(``prior_sampling = "study"``) that is still the density whose ``log_prob`` enters the weights, so
the estimate stays a valid importance-sampling estimate of the same p(x).

Memory is bounded for any k: the k samples are decoded in chunks of at most ``max_elements``
decoder outputs (samples x images x pixels) and combined with a running log-sum-exp. The noise is
drawn in fixed blocks of ``NOISE_BLOCK`` samples whatever the chunk size, and the images are
evaluated in fixed passes of ``IMAGES_PER_PASS``, so the estimate depends only on the seed, k and
the images in their order, not on the chunking or on the caller's batch size.

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
from vaelab.model.vae import VAE

# Decoder outputs (samples x images x pixels) per chunk: ~2,500 MNIST decodes, which measured as
# fast per decode as any other chunk size for the conv decoder on CPU (500 to 4,000 decodes were
# level, 8,000 slower). The conv decoder's last hidden layer is 32 channels, so a chunk peaks at a
# few hundred MB. A chunk holds at least one sample of every image of a pass.
DEFAULT_MAX_ELEMENTS = 2_000_000
# Samples per call to ``q.sample``; the draws, hence the estimate, do not depend on the chunking.
NOISE_BLOCK = 64
# Images evaluated together: the caller's batches are regrouped into passes of this many images, so
# the estimate does not depend on the caller's batch size either (and progress is reported often).
IMAGES_PER_PASS = 100


def _sample_blocks(q, k: int) -> Iterator[torch.Tensor]:
    for start in range(0, k, NOISE_BLOCK):
        yield q.sample((min(NOISE_BLOCK, k - start),))


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


def _samples_per_chunk(k: int, images: int, outputs_per_image: int, max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """How many importance samples of ``images`` images to decode at once (at least 1, at most k)."""
    return max(1, min(k, max_elements // max(1, images * outputs_per_image)))


def _check_counts(k: int, sample_batch: int | None) -> None:
    if k < 1:
        raise VaelabError(f"the number of importance samples k must be >= 1, got {k}")
    if sample_batch is not None and sample_batch < 1:
        raise VaelabError(f"sample_batch must be >= 1 (or None for automatic), got {sample_batch}")


@torch.no_grad()
def iwae_bound(
    model: VAE,
    x: torch.Tensor,
    k: int,
    sample_batch: int | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> torch.Tensor:
    """The k-sample IWAE bound log (1/k) sum_i p(x, z_i) / q(z_i | x) per image, in nats.

    Returns a float64 tensor of shape B. Uses the model as it is (put it in eval mode) and draws
    from the global torch RNG (seed it, or use :func:`estimate_log_likelihood`). Samples are
    decoded ``sample_batch`` at a time (default: as many as keep a chunk within ``max_elements``
    decoder outputs), all images of ``x`` together (z is S x B x d), with a running log-sum-exp
    over chunks.
    """
    _check_counts(k, sample_batch)
    q = model.q_z(x)
    prior = model.p_z()
    chunk = sample_batch or _samples_per_chunk(k, len(x), x[0].numel(), max_elements)
    total = None
    for z in _rechunk(_sample_blocks(q, k), chunk):  # z: S x B x d
        log_w = model.p_x(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)
        part = torch.logsumexp(log_w.double(), 0)
        total = part if total is None else torch.logaddexp(total, part)
    return total - math.log(k)


def _model_device(model: torch.nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def estimate_log_likelihood(
    model: VAE,
    batches: Batches | Iterable[torch.Tensor],
    k: int = 5000,
    sample_batch: int | None = None,
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

    Deterministic: the noise comes from a forked RNG seeded with ``seed`` (the caller's RNG is left
    untouched). The model runs in eval mode under no_grad, and its train/eval mode is restored.
    """
    _check_counts(k, sample_batch)
    retain_freed_memory()  # each chunk's decoder activations reuse the previous chunk's memory
    iterable = batches.epoch(shuffle=False) if isinstance(batches, Batches) else batches
    device = _model_device(model)
    values: list[torch.Tensor] = []
    pixels = 0
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            done = 0
            for x in _rechunk(iterable, IMAGES_PER_PASS):
                x = x.to(device)
                pixels = x[0].numel()
                values.append(iwae_bound(model, x, k, sample_batch, max_elements).cpu())
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
    if return_per_image:
        result["per_image"] = nll_per_image.tolist()
    return result
