"""Gaussian likelihoods: ``gaussian`` (fixed scale), ``gaussian-learned`` (a learned scale per pixel) and
``gaussian-decoded`` (mean and log-variance decoded per image, Kingma & Welling's Gaussian decoder)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
)

from vaelab.core.registry import LIKELIHOODS
from vaelab.errors import VaelabError

# a pixel that never changes would drive a learned scale to 0 and its density to infinity; 1e-3 is
# a quarter of one grey level (1/255), so the bound does not blur 8-bit images
MIN_SCALE = 1e-3


def _check_initial_scale(scale: float) -> float:
    if not scale > MIN_SCALE:
        raise VaelabError(f"model.likelihood_scale must be > {MIN_SCALE:g} (the smallest scale) here, got {scale}")
    return float(scale)


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(x; mu(z), scale^2 I) with a fixed scale, normalising constant included."""

    params_per_channel = 1

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, mean: torch.Tensor) -> Distribution:
        return Independent(Normal(mean, self.scale, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output whose distribution has mean ``mean`` (the mean itself)."""
        return mean.clone()

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class LearnedScaleGaussianLikelihood(nn.Module):
    """p(x|z) = N(x; mu(z), diag sigma^2): mu decoded, sigma one learned parameter per pixel and channel,
    sigma = MIN_SCALE + exp(log_scale), starting at ``initial_scale``."""

    params_per_channel = 1

    def __init__(self, image_shape: tuple[int, int, int], initial_scale: float) -> None:
        super().__init__()
        start = math.log(_check_initial_scale(initial_scale) - MIN_SCALE)
        self.log_scale = nn.Parameter(torch.full(tuple(image_shape), start))

    def forward(self, mean: torch.Tensor) -> Distribution:
        scale = (MIN_SCALE + self.log_scale.exp()).expand_as(mean)
        return Independent(Normal(mean, scale, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.clone()


class DecodedGaussianLikelihood(nn.Module):
    """Kingma & Welling's Gaussian decoder: p(x|z) = N(x; mu(z), diag sigma(z)^2), mu and log sigma^2
    both decoded per pixel (channels [0, C) and [C, 2C)), sigma = MIN_SCALE + exp(log sigma^2 / 2).

    ``initial_scale`` is where ``output_for_mean`` starts sigma (model.decoder_bias = data-mean).
    """

    params_per_channel = 2

    def __init__(self, initial_scale: float) -> None:
        super().__init__()
        self.initial_scale = _check_initial_scale(initial_scale)

    def forward(self, out: torch.Tensor) -> Distribution:
        mean, log_var = out.chunk(2, dim=-3)
        scale = MIN_SCALE + torch.exp(0.5 * log_var)
        return Independent(Normal(mean, scale, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """Mean channels at ``mean``, log-variance channels where sigma = initial_scale."""
        log_var = torch.full_like(mean, 2 * math.log(self.initial_scale - MIN_SCALE))
        return torch.cat([mean, log_var])

    def extra_repr(self) -> str:
        return f"initial_scale={self.initial_scale}"


@LIKELIHOODS.register("gaussian", "Gaussian with a fixed scale (model.likelihood_scale), normalised")
def _gaussian(config, image_shape) -> GaussianLikelihood:
    return GaussianLikelihood(config.likelihood_scale)


@LIKELIHOODS.register("gaussian-learned", "Gaussian, one learned scale per pixel (starting at model.likelihood_scale)")
def _gaussian_learned(config, image_shape) -> LearnedScaleGaussianLikelihood:
    return LearnedScaleGaussianLikelihood(image_shape, config.likelihood_scale)


@LIKELIHOODS.register("gaussian-decoded", "Gaussian, mean and log-variance decoded per pixel (Kingma & Welling)")
def _gaussian_decoded(config, image_shape) -> DecodedGaussianLikelihood:
    return DecodedGaussianLikelihood(config.likelihood_scale)
