"""The protocol every posterior distribution follows (``PosteriorDistribution``) and what the families share."""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution

from vaelab.errors import VaelabError


def standard_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    """log N(eps; 0, I), summed over the last dimension."""
    return -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(-1)


class PosteriorDistribution:
    """The protocol of a posterior (see the module docstring), mixed into a torch Distribution.

    A subclass defines ``reparameterize`` and has ``loc``, its base Gaussian's location (batch_shape
    + (d,)), whose dtype and device the noise takes.
    """

    family = ""  # the registered name, for messages
    loc: torch.Tensor
    batch_shape: torch.Size

    @property
    def latent_dim(self) -> int:
        return self.loc.shape[-1]

    def reparameterize(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def standard_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Noise of shape sample_shape + (d,) from the global RNG, drawn as torch's Normal.rsample draws it."""
        shape = torch.Size(sample_shape) + (self.latent_dim,)
        return torch.empty(shape, dtype=self.loc.dtype, device=self.loc.device).normal_()

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reparameterize(self.standard_noise(torch.Size(sample_shape) + self.batch_shape))

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def proposal(self) -> PosteriorDistribution:
        """The distribution to importance-sample from (the NLL): the one whose samples ``log_q`` is the
        density of. Itself, for every family but the study's sampler."""
        return self

    def detached(self) -> Distribution:
        raise VaelabError(
            f"objective.gradient = dreg is not available for model.posterior = {self.family}; use reparam"
        )


def refuse_study_sampling(config, name: str) -> None:
    if config.prior_sampling == "study":
        raise VaelabError(
            f"model.prior_sampling = study is the diagonal posterior's sampler; model.posterior = {name} "
            "samples its own z (set model.prior_sampling = posterior)"
        )
