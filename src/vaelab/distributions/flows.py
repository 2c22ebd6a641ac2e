"""The networks of an inverse autoregressive flow (Kingma et al. 2016): MADE steps conditioned on a context.

One step maps z to

    z' = sigma * z + (1 - sigma) * m,    [m, s] = MADE(z, h),    sigma = sigmoid(s),

the numerically stable update of Kingma et al. (their eqs. 11-14). Output i of the MADE (Germain et
al. 2015) sees only the inputs before i in the step's ordering, so dz'/dz is triangular with diagonal
sigma and log |det dz'/dz| = sum_i log sigma_i. The context h (from the encoder) enters the first
hidden layer unmasked, so every output may depend on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Kingma et al.: s starts "sufficiently positive, close to +1 or +2", so each step starts near the identity
GATE_BIAS = 2.0


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features x in_features)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        # derived from the config, never read from a file: a saved model cannot break the ordering
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """x (... x d) and context h (... x c) -> [m, s] (... x 2d), output i a function of h and of the
    inputs ordered before i only; two hidden layers of ``hidden`` ELU units.

    ``order[i]`` is input i's position (1..d) in the autoregressive ordering. Hidden units get
    positions 1..d-1 in turn, and a unit sees the inputs (or units) at positions up to its own;
    output i sees the units at positions strictly before order[i].
    """

    def __init__(self, order: torch.Tensor, hidden: int, context: int) -> None:
        super().__init__()
        d = len(order)
        units = torch.arange(hidden) % max(d - 1, 1) + 1
        outputs = torch.cat([order, order])  # m and s of input i share its position
        self.input = MaskedLinear(units[:, None] >= order[None, :])
        self.context = nn.Linear(context, hidden, bias=False)
        self.hidden = MaskedLinear(units[:, None] >= units[None, :])
        self.output = MaskedLinear(outputs[:, None] > units[None, :])

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        a = F.elu(self.input(x) + self.context(h))
        return self.output(F.elu(self.hidden(a)))


class IAFStep(nn.Module):
    """One step z -> sigma * z + (1 - sigma) * m; returns it with log |det dz'/dz| = sum log sigma."""

    def __init__(self, order: torch.Tensor, hidden: int, context: int) -> None:
        super().__init__()
        self.made = MADE(order, hidden, context)
        d = len(order)
        with torch.no_grad():
            self.made.output.bias[d:].fill_(GATE_BIAS)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = self.made(z, h).chunk(2, dim=-1)
        sigma = torch.sigmoid(s)
        return sigma * z + (1 - sigma) * m, F.logsigmoid(s).sum(-1)


def iaf_steps(latent_dim: int, steps: int, hidden: int, context: int) -> nn.ModuleList:
    """``steps`` IAF steps over ``latent_dim`` numbers, the ordering reversed from one step to the next
    (so every coordinate comes early in some step)."""
    forward = torch.arange(1, latent_dim + 1)
    return nn.ModuleList(IAFStep(forward if t % 2 == 0 else forward.flip(0), hidden, context) for t in range(steps))
