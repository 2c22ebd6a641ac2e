"""One optimisation step, shared by the trainer and the benchmark (so the benchmark times what trains)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from vaelab.model.objectives import Shard, Terms
from vaelab.train.distributed import World


class TrainStep:
    """objective -> backward -> optimiser update; with ``precision="bf16"`` the networks run under
    bf16 autocast while the distributions, losses and KL stay fp32 (``VAE.networks_in``).

    With a ``world`` of several processes each step sees this process's ``shard`` of the global
    batch: its loss is weighted by its share of the global batch and the gradients are summed over
    the processes, which gives the gradient of the global batch's mean loss.
    """

    def __init__(
        self,
        model,
        objective,
        optimizer: torch.optim.Optimizer,
        precision: str = "fp32",
        device_type: str = "cpu",
        world: World | None = None,
    ):
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.precision = precision
        self.device_type = device_type
        self.world = world or World()
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    def autocast(self):
        if self.precision == "bf16":
            return self.model.networks_in(torch.bfloat16)
        return nullcontext()

    def __call__(self, x: torch.Tensor, kl_weight: float = 1.0, shard: Shard | None = None) -> Terms:
        with self.autocast():
            if shard is None:
                terms = self.objective(self.model, x, kl_weight=kl_weight)
            else:
                terms = self.objective(self.model, x, kl_weight=kl_weight, shard=shard)
        self.optimizer.zero_grad(set_to_none=True)
        if shard is None:
            terms.loss.backward()
        elif len(x):
            (terms.loss * (len(x) / shard.total)).backward()
        if self.world.distributed:
            self.world.sum_gradients(self.parameters)
        self.optimizer.step()
        return terms
