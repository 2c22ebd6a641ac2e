"""Adam as the trainer makes it: torch's fused Adam, or the same with Keras' placement of epsilon.

torch divides by sqrt(v_hat) + eps, the bias-corrected second moment; Keras (its Adam and the legacy
one alike) by sqrt(v) + eps before the correction, folding the correction into the step size:

    keras:  theta -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    torch:  theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps')

They agree when eps' = eps / sqrt(1 - b2^t), so :class:`KerasEpsilonAdam` sets each group's eps to that
before every step and lets the fused kernel do the rest. The difference is a larger effective
epsilon in the first steps (3.2e-6 against 1e-7 at step 1), which matters for tiny gradients only.
"""

from __future__ import annotations

import math

import torch

from vaelab.config import ADAM_EPS_PLACEMENTS
from vaelab.errors import VaelabError


class KerasEpsilonAdam(torch.optim.Adam):
    """torch's Adam whose updates are Keras' (epsilon added to sqrt(v) before the bias correction).

    Each group keeps Keras' epsilon (``keras_eps``) and its own count of steps (``keras_step``, as
    Keras counts iterations: once per update), so a checkpoint's groups bring both back.
    """

    def __init__(self, params, keras_eps: float | None = None, keras_step: int = 0, **settings) -> None:
        self._restored = (keras_eps, keras_step)  # a checkpoint's groups pass them back as settings
        super().__init__(params, **settings)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group, (keras_eps, keras_step) = self.param_groups[-1], self._restored
        group.setdefault("keras_eps", group["eps"] if keras_eps is None else keras_eps)
        group.setdefault("keras_step", keras_step)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group["keras_step"] += 1
            group["eps"] = group["keras_eps"] / math.sqrt(1.0 - group["betas"][1] ** group["keras_step"])
        return super().step(closure)


def make_adam(param_groups, lr: float, eps: float, placement: str = "torch") -> torch.optim.Adam:
    """Fused Adam over ``param_groups``; ``placement = "keras"`` adds eps where Keras does."""
    if placement not in ADAM_EPS_PLACEMENTS:
        raise VaelabError(
            f"Adam's epsilon placement must be one of {', '.join(ADAM_EPS_PLACEMENTS)}, not {placement!r}"
        )
    adam = KerasEpsilonAdam if placement == "keras" else torch.optim.Adam
    # fused: one kernel for the whole update instead of a dozen per tensor (~5-25% faster steps here)
    return adam(param_groups, lr=lr, eps=eps, fused=True)
