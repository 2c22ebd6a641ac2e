"""Likelihoods p(x | z): map the decoder's output image(s) to a distribution over images.

The decoder produces ``params_per_channel`` maps per image channel; each likelihood here is a
true (normalised) log-density over the C x H x W event in [0, 1] (the logistic mixture: a
log-probability over the 256 levels of 8-bit images), except that the Bernoulli family is also used
with grey-level targets in [0, 1], as the study and most tutorials do (a cross-entropy).

``output_for_mean(mean)`` gives the decoder output whose distribution has mean ``mean`` (C x H x W,
or one number per channel), for ``model.decoder_bias = data-mean``; ``.mean`` of the distribution
is the image the figures show.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    ContinuousBernoulli,
    Distribution,
    Independent,
    Normal,
    constraints,
)

from vaelab.core.registry import LIKELIHOODS
from vaelab.errors import VaelabError

# a pixel that never changes would drive a learned scale to 0 and its density to infinity; 1e-3 is
# a quarter of one grey level (1/255), so the bound does not blur 8-bit images
MIN_SCALE = 1e-3


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod Bernoulli(sigmoid(logits)), evaluated from logits (no sigmoid-then-log)."""

    params_per_channel = 1
    # a pixel that is never on would want logit -inf; 1e-3 (logit -6.9) is already far in the tail
    MEAN_CLAMP = 1e-3

    def forward(self, logits: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output (logits) whose distribution has mean ``mean``."""
        return torch.logit(mean.clamp(self.MEAN_CLAMP, 1 - self.MEAN_CLAMP))


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


def _check_initial_scale(scale: float) -> float:
    if not scale > MIN_SCALE:
        raise VaelabError(f"model.likelihood_scale must be > {MIN_SCALE:g} (the smallest scale) here, got {scale}")
    return float(scale)


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


# --- continuous Bernoulli ---------------------------------------------------------------------

_TAYLOR_BELOW = 0.1  # |logit| under which the series replace the closed forms (which cancel there)


def continuous_bernoulli_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(eta), C(eta) = eta / (e^eta - 1), so that p(x) = C(eta) e^(eta x) integrates to 1 on [0, 1].

    Written as log|eta| - max(eta, 0) - log(1 - e^-|eta|), which neither overflows nor cancels for
    |eta| >= 0.1; below, the series -eta/2 - eta^2/24 + eta^4/2880 (next term eta^6/181440).
    """
    a = logits.abs()
    small = a < _TAYLOR_BELOW
    a_safe = torch.where(small, torch.full_like(a, _TAYLOR_BELOW), a)  # no log(0) even in the unused branch
    closed = a_safe.log() - logits.clamp(min=0) - torch.log(-torch.expm1(-a_safe))
    series = -logits / 2 - logits**2 / 24 + logits**4 / 2880
    return torch.where(small, series, closed)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] = 1 / (1 - e^-eta) - 1 / eta; below |eta| = 0.1 the series 1/2 + eta/12 - eta^3/720.

    The first term is written with e^-|eta| only (for eta < 0 it is -e^-|eta| / (1 - e^-|eta|)), so
    neither it nor its gradient overflows.
    """
    small = logits.abs() < _TAYLOR_BELOW
    eta = torch.where(small, torch.full_like(logits, _TAYLOR_BELOW), logits)
    decay = torch.exp(-eta.abs())
    closed = torch.where(eta > 0, torch.ones_like(decay), -decay) / -torch.expm1(-eta.abs()) - 1 / eta
    series = 0.5 + logits / 12 - logits**3 / 720
    return torch.where(small, series, closed)


class StableContinuousBernoulli(ContinuousBernoulli):
    """torch's ContinuousBernoulli with ``log_prob`` and ``mean`` computed from the logits.

    torch computes both from probs = sigmoid(logits), which in float32 rounds to 0 or 1 beyond
    |logit| ~ 16: there its log-density no longer integrates to 1 and its mean stops moving (the
    decoder drives a background pixel's logit far beyond that). Its other methods are torch's.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.logits * value + continuous_bernoulli_log_normalizer(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return continuous_bernoulli_mean(self.logits)


class ContinuousBernoulliLikelihood(nn.Module):
    """p(x|z) = prod C(eta) e^(eta x) on [0, 1] (Loaiza-Ganem & Cunningham 2019): the Bernoulli's shape,
    normalised as a density for grey levels, so -log p(x|z) is a real negative log-likelihood."""

    params_per_channel = 1
    # a mean of 0.01 already needs logit ~ -100 (the mean approaches 0 like -1/eta)
    MEAN_CLAMP = 0.01
    _BRACKET = 200.0  # mean(-200) = 0.005 < MEAN_CLAMP

    def forward(self, logits: torch.Tensor) -> Distribution:
        return Independent(StableContinuousBernoulli(logits=logits, validate_args=False), 3, validate_args=False)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The logits whose mean is ``mean``: the mean increases with eta, so bisection finds them."""
        target = mean.double().clamp(self.MEAN_CLAMP, 1 - self.MEAN_CLAMP)
        lo, hi = torch.full_like(target, -self._BRACKET), torch.full_like(target, self._BRACKET)
        for _ in range(64):
            mid = (lo + hi) / 2
            below = continuous_bernoulli_mean(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return ((lo + hi) / 2).to(mean.dtype)


# --- discretised logistic mixture --------------------------------------------------------------

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
        # sigmoid(u) - sigmoid(l) = sigmoid(u) sigmoid(-l) (1 - e^-(u - l)): no cancellation, no inf
        interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
        return torch.where(
            level == 0, F.logsigmoid(upper), torch.where(level == LEVELS - 1, F.logsigmoid(-lower), interior)
        )

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


@LIKELIHOODS.register("bernoulli", "Bernoulli from logits; on grey levels a cross-entropy, not a log-likelihood")
def _bernoulli(config, image_shape) -> BernoulliLikelihood:
    return BernoulliLikelihood()


@LIKELIHOODS.register("gaussian", "Gaussian with a fixed scale (model.likelihood_scale), normalised")
def _gaussian(config, image_shape) -> GaussianLikelihood:
    return GaussianLikelihood(config.likelihood_scale)


@LIKELIHOODS.register(
    "continuous-bernoulli", "continuous Bernoulli from logits: a normalised density for grey levels in [0, 1]"
)
def _continuous_bernoulli(config, image_shape) -> ContinuousBernoulliLikelihood:
    return ContinuousBernoulliLikelihood()


@LIKELIHOODS.register("gaussian-learned", "Gaussian, one learned scale per pixel (starting at model.likelihood_scale)")
def _gaussian_learned(config, image_shape) -> LearnedScaleGaussianLikelihood:
    return LearnedScaleGaussianLikelihood(image_shape, config.likelihood_scale)


@LIKELIHOODS.register("gaussian-decoded", "Gaussian, mean and log-variance decoded per pixel (Kingma & Welling)")
def _gaussian_decoded(config, image_shape) -> DecodedGaussianLikelihood:
    return DecodedGaussianLikelihood(config.likelihood_scale)


@LIKELIHOODS.register(
    "logistic-mixture",
    "discretised mixture of model.likelihood_components logistics over 256 levels (Salimans et al. 2017)",
)
def _logistic_mixture(config, image_shape) -> LogisticMixtureLikelihood:
    return LogisticMixtureLikelihood(config.likelihood_components)
