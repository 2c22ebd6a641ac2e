"""One optimisation step, shared by the trainer and the benchmark (so the benchmark times what trains)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from vaelab.model.objectives import Terms


class TrainStep:
    """objective -> backward -> optimiser update, under bf16 autocast if asked."""

    def __init__(
        self, model, objective, optimizer: torch.optim.Optimizer, precision: str = "fp32", device_type: str = "cpu"
    ):
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.precision = precision
        self.device_type = device_type

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return nullcontext()

    def __call__(self, x: torch.Tensor, kl_weight: float = 1.0) -> Terms:
        with self.autocast():
            terms = self.objective(self.model, x, kl_weight=kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.optimizer.step()
        return terms
