"""Never a NaN model: the check a run passes before it writes anything, and what it says when it fails.

A run diverges when its weights, its optimiser's state or its numbers stop being finite. That can
happen in the last step of an epoch (the loss of that step was still finite), show only on held-out
images, or only in Adam's moments (gradients beyond float32, as a huge ``objective.beta`` makes them,
while the weights stay finite), so the trainer checks all of them before it logs, checkpoints or saves.
The error names the epoch and the settings of the run's config that most often cause it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from vaelab.config import RunConfig
from vaelab.errors import VaelabError


def non_finite_weights(module: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` holding NaN or inf."""
    return [
        name
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]


def non_finite_state(optimizer: torch.optim.Optimizer | None) -> list[str]:
    """Names (``exp_avg_sq``...) of the optimiser's per-parameter state tensors holding NaN or inf."""
    if optimizer is None:
        return []
    return sorted(
        {
            name
            for state in optimizer.state.values()
            for name, value in state.items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()
        }
    )


def non_finite_numbers(record: dict[str, Any]) -> list[str]:
    """Keys of ``record`` whose number, or one of whose list of numbers, is NaN or inf."""

    def finite(value: Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, (list, tuple)):
            return all(map(finite, value))
        return True

    return [key for key, value in record.items() if not finite(value)]


def likely_causes(config: RunConfig) -> list[str]:
    """The settings of ``config`` that most often make a VAE diverge, each with what to try."""
    model, train, beta = config.model, config.train, config.objective.beta
    causes = []
    if train.lr > 3e-3:
        causes.append(f"train.lr = {train.lr:g} is high for Adam (VAEs train at 1e-4 to 1e-3)")
    if beta > 10:
        causes.append(f"objective.beta = {beta:g} is large (1 is the ELBO; beta-VAEs use up to about 10-100)")
    if model.likelihood == "gaussian" and model.likelihood_scale < 0.01:
        causes.append(
            f"model.likelihood_scale = {model.likelihood_scale:g} is small for the gaussian likelihood "
            "(its reconstruction term grows as 1 / scale^2)"
        )
    if train.precision == "bf16":
        causes.append("train.precision = bf16 keeps 8 bits of mantissa (try fp32)")
    return causes or [f"none of the usual settings stands out; try a lower train.lr (now {train.lr:g})"]


def stop_if_diverged(
    config: RunConfig,
    epoch: int,
    modules: Iterable[torch.nn.Module | None] = (),
    records: Iterable[dict[str, Any]] = (),
    kept: str = "",
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Raise the run's divergence error if a weight of ``modules``, a tensor of ``optimizer``'s state or a
    number of ``records`` is not finite.

    ``records`` are metrics records, each with its ``split``; ``kept`` says what of the run survives.
    """
    found = []
    for module in modules:
        names = non_finite_weights(module) if module is not None else []
        if names:
            found.append(f"NaN or inf in the weights ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    state = non_finite_state(optimizer)
    if state:
        found.append(f"NaN or inf in the optimiser's {', '.join(state)} (gradients beyond float32's range)")
    for record in records:
        keys = non_finite_numbers(record)
        if keys:
            found.append(f"the {record.get('split', '')} {', '.join(keys)} came out NaN or inf")
    if found:
        raise VaelabError(
            f"training diverged in epoch {epoch}: {'; '.join(found)}. "
            f"Likely cause: {'; '.join(likely_causes(config))}. {kept}".rstrip()
        )


__all__ = ["likely_causes", "non_finite_numbers", "non_finite_state", "non_finite_weights", "stop_if_diverged"]
