"""The test-set ELBO and its parts, per image in nats, with a fixed noise seed.

Evaluation draws its reparameterisation noise from a forked RNG seeded with ``seed``, so the same
model gives the same numbers every time and evaluating never perturbs a training run's RNG.
"""

from __future__ import annotations

import torch

from vaelab.data.batches import Batches
from vaelab.model.base import Context, LatentVariableModel
from vaelab.model.objectives import ELBO

EVAL_SEED_OFFSET = 10_000  # evaluation noise is seeded apart from the training stream


def evaluation_seed(train_seed: int) -> int:
    """The noise seed used for a run's validation and test numbers (so `vaelab eval` matches them)."""
    return train_seed + EVAL_SEED_OFFSET


@torch.no_grad()
def evaluate_elbo(
    model: LatentVariableModel, batches: Batches, seed: int = EVAL_SEED_OFFSET
) -> dict[str, float | list[float]]:
    """Average -ELBO (total), reconstruction and KL per image; KL per latent dimension if it factorises; and
    each extra term the family names (``ElboParts.extra``), averaged over the images.

    The bound is a one-sample estimate per image, so its value depends on the noise ``seed`` (and on the
    batch size, which decides which noise each image draws). The default is the seed a run with
    ``train.seed = 0`` used for its own validation and test numbers (:func:`evaluation_seed`), so those
    numbers are repeated; for another run, pass ``evaluation_seed(config.train.seed)``.
    """
    objective = ELBO()
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    kl_per_dim = None
    extra: dict[str, torch.Tensor] = {}
    count = 0
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in batches.batches(shuffle=False):
            x = batch.x.to(device)
            # the labels reach families that condition on them (cvae); the others ignore them
            terms = objective(model, x, Context(labels=None if batch.y is None else batch.y.to(device)))
            sums += torch.stack([terms.total.sum(), terms.reconstruction.sum(), terms.kl.sum()]).double().cpu()
            if terms.kl_per_dim is not None:
                batch_sum = terms.kl_per_dim.sum(0).double().cpu()
                kl_per_dim = batch_sum if kl_per_dim is None else kl_per_dim + batch_sum
            for name, value in terms.extra.items():
                extra[name] = extra.get(name, 0.0) + value.sum().double().cpu()
            count += len(x)
    model.train(was_training)
    total, reconstruction, kl = (sums / count).tolist()
    result: dict[str, float | list[float]] = {"total": total, "reconstruction": reconstruction, "kl": kl}
    if kl_per_dim is not None:
        result["kl_per_dim"] = (kl_per_dim / count).tolist()
    result.update({name: float(value / count) for name, value in extra.items() if name not in result})
    return result
