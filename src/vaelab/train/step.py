"""One optimisation step, shared by the trainer and the benchmark (so the benchmark times what trains)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from vaelab.model.base import Context, Shard, Terms
from vaelab.train.distributed import World
from vaelab.train.precision import network_dtype


class TrainStep:
    """objective -> backward -> optimiser update; with ``precision="bf16"`` the networks run under
    bf16 autocast while the distributions, losses and KL stay fp32 (``VAE.networks_in``).

    With a ``world`` of several processes each step sees this process's ``shard`` of the global
    batch: its loss is weighted by its share of the global batch and the gradients are summed over
    the processes, which gives the gradient of the global batch's mean loss.

    ``compile=True`` runs the objective through ``torch.compile`` (inductor): forward and backward
    become one graph each, with the elementwise work fused and the Python overhead gone; the
    optimiser step stays eager (fused Adam). Random draws go through the eager kernels
    (``fallback_random``), so the noise, hence the run, is the same stream as without compiling;
    the numbers agree to float tolerance (fused kernels round differently).
    """

    def __init__(
        self,
        model,
        objective,
        optimizer: torch.optim.Optimizer,
        precision: str = "fp32",
        device_type: str = "cpu",
        world: World | None = None,
        compile: bool = False,
        dataset_size: int = 0,
    ):
        self.model = model
        self.dataset_size = dataset_size  # the training examples batches are drawn from (estimators of q(z))
        self.objective = self.eager_objective = objective  # the eager one keeps any state between steps
        if compile:
            import torch._inductor.config as inductor_config

            inductor_config.fallback_random = True
            self.objective = torch.compile(objective)
        self.optimizer = optimizer
        self.precision = precision
        self.dtype = network_dtype(precision, device_type)
        self.device_type = device_type
        self.world = world or World()
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    def autocast(self):
        if self.dtype is not None:
            return self.model.networks_in(self.dtype)
        return nullcontext()

    def __call__(
        self,
        x: torch.Tensor,
        kl_weight: float = 1.0,
        shard: Shard | None = None,
        labels: torch.Tensor | None = None,
        step: int = 0,
    ) -> Terms:
        """One update on the batch ``x``; ``step``: the optimiser steps the run has taken before it."""
        ctx = Context(kl_weight=kl_weight, labels=labels, shard=shard, step=step, dataset_size=self.dataset_size)
        with self.autocast():
            terms = self.objective(self.model, x, ctx)
        self.optimizer.zero_grad(set_to_none=True)
        if shard is None:
            terms.loss.backward()
        elif len(x):
            (terms.loss * (len(x) / shard.total)).backward()
        if self.world.distributed:
            self.world.sum_gradients(self.parameters)
        self.optimizer.step()
        self.eager_objective.after_step(terms)
        return terms
