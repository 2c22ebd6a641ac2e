"""Never a NaN model: the check a run passes before it writes anything, and what it says when it fails.

A run diverges when its weights or its numbers stop being finite. That can happen in the last step
of an epoch (the loss of that step was still finite) or show only on held-out images, so the trainer
checks the weights and the validation and test numbers before it logs, checkpoints or saves them.
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
        causes.append(f"objective.beta = {beta:g} is large")
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
) -> None:
    """Raise the run's divergence error if a weight of ``modules`` or a number of ``records`` is not finite.

    ``records`` are metrics records, each with its ``split``; ``kept`` says what of the run survives.
    """
    found = []
    for module in modules:
        names = non_finite_weights(module) if module is not None else []
        if names:
            found.append(f"NaN or inf in the weights ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    for record in records:
        keys = non_finite_numbers(record)
        if keys:
            found.append(f"the {record.get('split', '')} {', '.join(keys)} came out NaN or inf")
    if found:
        raise VaelabError(
            f"training diverged in epoch {epoch}: {'; '.join(found)}. "
            f"Likely cause: {'; '.join(likely_causes(config))}. {kept}".rstrip()
        )


__all__ = ["likely_causes", "non_finite_numbers", "non_finite_weights", "stop_if_diverged"]
