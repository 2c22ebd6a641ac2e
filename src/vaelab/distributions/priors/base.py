"""The protocol every prior follows (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Distribution, Independent, MixtureSameFamily, Normal

PosteriorMap = Callable[[torch.Tensor], Distribution]  # images -> q(z | x), e.g. VAE.q_z


def standard_normal_noise(n: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """n x d standard normal noise from ``generator`` (on its device), moved to ``like``'s device and dtype."""
    return torch.randn((n, like.shape[-1]), generator=generator, device=generator.device).to(like)


class GaussianMixtureDistribution(MixtureSameFamily):
    """torch's MixtureSameFamily, with ``log_prob`` of diagonal Gaussian components written in fewer
    passes over the (..., K, d) tensor: the whitened differences, the sum of their squares, and one
    normalising constant per component (Normal.log_prob makes about twice as many, and as many again
    backward). The mixture priors' KL needs it at every step, the VampPrior's at K = 100 or more
    components. Other components (a full-covariance posterior's VampPrior) take torch's own."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        components = self.component_distribution
        diagonal = isinstance(components, Independent) and components.reinterpreted_batch_ndims == 1
        if not (diagonal and isinstance(components.base_dist, Normal)):
            return super().log_prob(value)
        loc, scale = components.base_dist.loc, components.base_dist.scale
        whitened = (value.unsqueeze(-2) - loc) * scale.reciprocal()
        log_normalizer = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_components = -0.5 * whitened.square().sum(-1) - log_normalizer
        return torch.logsumexp(log_components + torch.log_softmax(self.mixture_distribution.logits, -1), dim=-1)


class Prior(nn.Module):
    """The protocol every prior follows (see the module docstring)."""

    def forward(self, q_z: PosteriorMap | None = None) -> Distribution:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, q_z: PosteriorMap | None = None) -> torch.Tensor:
        """n draws from p(z), determined by ``generator`` alone (torch's global RNG is left as it was).

        This general form seeds a forked RNG from the generator and asks the distribution to sample;
        location-scale priors override it with their z = loc + scale * eps.
        """
        p = self(q_z)
        device = p.mean.device
        seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return p.sample((n,))

    def gaussian(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(loc, L) when p(z) is exactly the Gaussian N(loc, L L^T), whose 1σ / 2σ ellipses the figures
        draw; None for any other prior (the figures then draw its density)."""
        return None

    def correlated_frame(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(loc, L) of a correlated Gaussian prior N(loc, L L^T), whose whitened coordinates u (z = loc
        + L u) the figures lay their grids out in; None for every other prior."""
        return None
