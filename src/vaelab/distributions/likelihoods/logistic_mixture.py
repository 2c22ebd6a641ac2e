"""``logistic-mixture``: the discretised logistic mixture (Salimans et al. 2017) over the 256 levels of 8-bit images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Categorical,
    Distribution,
    constraints,
)

from vaelab.core.registry import LIKELIHOODS
from vaelab.errors import VaelabError

LEVELS = 256


LOG_SCALE_MIN = -7.0  # Salimans et al.'s floor: a scale of e^-7 is a quarter of one level


class DiscretizedLogisticMixture(Distribution):
    """Per pixel and channel, a mixture of K logistics over [0, 1], discretised into the 256 levels of
    8-bit images (Salimans et al. 2017): level l = round(255 x) gets the mass of [(l - 1/2)/255,
    (l + 1/2)/255], level 0 all below and level 255 all above. Event: C x H x W.

    Channels are independent given z: PixelCNN++'s autoregression across colour channels has nothing
    to do for one-channel images such as MNIST, and is not implemented.
    Parameters: ``logits``, ``loc``, ``log_scale``, each (batch..., K, C, H, W).
    """

    arg_constraints = {}
    support = constraints.unit_interval

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> None:
        self.logits, self.loc, self.log_scale = logits, loc, log_scale
        super().__init__(loc.shape[:-4], loc.shape[-3:], validate_args=False)

    def log_mass(self, level: torch.Tensor) -> torch.Tensor:
        """log P(level) for each component (level broadcast against (batch..., K, C, H, W))."""
        inv_scale = torch.exp(-self.log_scale)
        # one expression per edge, so that level l's upper edge is level l+1's lower one to the last bit
        upper = inv_scale * ((level + 0.5) / (LEVELS - 1) - self.loc)
        lower = inv_scale * ((level - 0.5) / (LEVELS - 1) - self.loc)
        # each computed once: level 0's and level 255's masses, and factors of the interior's
        below_upper, above_lower = F.logsigmoid(upper), F.logsigmoid(-lower)
        # sigmoid(u) - sigmoid(l) = sigmoid(u) sigmoid(-l) (1 - e^-(u - l)): no cancellation, no inf
        interior = below_upper + above_lower + torch.log(-torch.expm1(lower - upper))
        return torch.where(level == 0, below_upper, torch.where(level == LEVELS - 1, above_lower, interior))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        level = (value * (LEVELS - 1)).round().clamp(0, LEVELS - 1).unsqueeze(-4)
        per_component = torch.log_softmax(self.logits, dim=-4) + self.log_mass(level)
        return torch.logsumexp(per_component, dim=-4).sum((-3, -2, -1))

    @property
    def mean(self) -> torch.Tensor:
        """E[level] / 255 with E[level] = sum_{b=1}^{255} P(level >= b), P(level >= b) = sigmoid((loc - (b - 1/2)/255) / scale)."""
        inv_scale = torch.exp(-self.log_scale)
        expected_level = torch.zeros_like(self.loc)
        for b in range(1, LEVELS):
            expected_level += torch.sigmoid(inv_scale * (self.loc - (b - 0.5) / (LEVELS - 1)))
        return (torch.softmax(self.logits, dim=-4) * expected_level).sum(-4) / (LEVELS - 1)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        component = Categorical(logits=self.logits.movedim(-4, -1), validate_args=False).sample(sample_shape)
        chosen = F.one_hot(component, self.logits.shape[-4]).movedim(-1, -4).to(self.loc.dtype)
        loc, log_scale = (chosen * self.loc).sum(-4), (chosen * self.log_scale).sum(-4)
        u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
        logistic = loc + log_scale.exp() * (u.log() - torch.log1p(-u))
        return (logistic * (LEVELS - 1)).round().clamp(0, LEVELS - 1) / (LEVELS - 1)


class LogisticMixtureLikelihood(nn.Module):
    """p(x|z): a discretised mixture of K logistics per pixel and channel (:class:`DiscretizedLogisticMixture`).

    The decoder gives 3K maps per channel: mixture logits, locations (on the [0, 1] scale) and log scales.
    """

    def __init__(self, components: int) -> None:
        super().__init__()
        self.components = int(components)
        self.params_per_channel = 3 * self.components

    def forward(self, out: torch.Tensor) -> Distribution:
        logits, loc, log_scale = out.unflatten(-3, (3, self.components, -1)).unbind(-5)
        return DiscretizedLogisticMixture(logits, loc, log_scale.clamp(min=LOG_SCALE_MIN))

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        raise VaelabError(
            "model.decoder_bias = data-mean is not available for the logistic-mixture likelihood "
            "(its mean is not one decoder output); use model.decoder_bias = default"
        )

    def extra_repr(self) -> str:
        return f"components={self.components}"


@LIKELIHOODS.register(
    "logistic-mixture",
    "discretised mixture of model.likelihood_components logistics over 256 levels (Salimans et al. 2017)",
)
def _logistic_mixture(config, image_shape) -> LogisticMixtureLikelihood:
    return LogisticMixtureLikelihood(config.likelihood_components)
