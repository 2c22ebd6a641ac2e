"""What a family that decodes under a discrete value shares: checked values, one-hot codes, the conditioned view.

The value is a label the data supplies (``cvae``: ``takes_labels``) or a category of the model's own
discrete latent (``gumbel``); either way ``condition(values)`` fixes it for code that knows only the
plain protocol (figures, ``vaelab sample --label``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from vaelab.errors import VaelabError
from vaelab.model.base import Context, ElboParts, LatentVariableModel, LogWeights

Labels = torch.Tensor | int | None
PASS_LABELS = "pass labels=..., or use model.condition(labels)"


class DiscreteInput:
    """Mixin of a LatentVariableModel whose decoder takes one of ``classes`` values beside the code."""

    family: str
    classes: int
    condition_name = "label"  # what a value is called in messages and figures

    def check_labels(self, labels: Labels, n: int, what: str, missing: str = PASS_LABELS) -> torch.Tensor:
        """``labels`` as n int64 values (a single one is repeated), or one line saying what is wrong."""
        name = self.condition_name
        names = name[:-1] + "ies" if name.endswith("y") else name + "s"
        if labels is None:
            raise VaelabError(f"the {self.family} model {what} under a {name} (0 to {self.classes - 1}): {missing}")
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise VaelabError(f"{names} must be integer class indices, got {labels.dtype}")
        if labels.dim() == 0:
            labels = labels.expand(n)
        if labels.shape != (n,):
            raise VaelabError(f"{tuple(labels.shape)} {names} for {n} examples; give one, or one per example")
        outside = labels[(labels < 0) | (labels >= self.classes)]
        if len(outside):
            raise VaelabError(
                f"{name} {int(outside[0])} is not a class of this model: its {names} are 0 to {self.classes - 1}"
                + (f" (model.classes = {self.classes})" if name == "label" else "")
            )
        return labels.long()

    def one_hot(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels.to(like.device), self.classes).to(like.dtype)

    def condition(self, labels: torch.Tensor | int) -> Conditioned:
        """This model with ``labels`` fixed (one for every example, or one per example)."""
        labels = torch.as_tensor(labels)
        self.check_labels(labels, len(labels) if labels.dim() else 1, "is conditioned")
        return Conditioned(self, labels)


class Conditioned(LatentVariableModel):
    """A conditional model whose labels are fixed: the plain protocol, for code that knows nothing of labels.

    A single label applies to any number of examples; a vector of labels, to calls of exactly that many.
    """

    def __init__(self, model: LatentVariableModel, labels: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.labels = labels.long()
        self.family, self.latent_dim, self.image_shape, self.classes = (
            model.family,
            model.latent_dim,
            model.image_shape,
            model.classes,
        )
        self.condition_name, self.takes_labels = model.condition_name, model.takes_labels
        self.prior = model.prior  # what the figures draw beside the codes

    def _rows(self, n: int) -> torch.Tensor:
        return self.model.check_labels(self.labels, n, "is conditioned")

    def networks(self) -> list[nn.Module]:
        return self.model.networks()

    def p_z(self) -> Distribution:
        return self.model.p_z()

    def elbo(self, x: torch.Tensor, ctx: Context) -> ElboParts:
        return self.model.elbo(x, replace(ctx, labels=self._rows(len(x))))

    def log_weights(
        self, x: torch.Tensor, k: int, ctx: Context, dreg_path: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> LogWeights:
        return self.model.log_weights(x, k, replace(ctx, labels=self._rows(len(x))), dreg_path)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x, self._rows(len(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z, self._rows(len(z)))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.sample(n, generator, self._rows(n))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.reconstruct(x, self._rows(len(x)))

    def condition(self, labels: torch.Tensor | int) -> Conditioned:
        return self.model.condition(labels)
