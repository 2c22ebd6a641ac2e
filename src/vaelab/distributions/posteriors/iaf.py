"""``iaf``: a diagonal Gaussian pushed through an inverse autoregressive flow (Kingma et al. 2016), with its
log-determinant in the bound; MADE steps conditioned on a context from the encoder.

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
from torch.distributions import Distribution, constraints

from vaelab.core.registry import POSTERIORS
from vaelab.distributions.posteriors.base import PosteriorDistribution, refuse_study_sampling, standard_normal_log_prob
from vaelab.errors import VaelabError

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


class FlowGaussian(PosteriorDistribution, Distribution):
    """q(z | x) of an inverse autoregressive flow: z_0 = mu + sigma * eps, then z_t = step_t(z_{t-1}, h).

    log q(z_T) = log N(eps) - sum log sigma - sum_t log |det dz_t/dz_{t-1}| (Kingma et al. 2016, eq. 14),
    known at the flow's own samples only: ``log_prob`` of an arbitrary z would need the flow inverted.
    ``mean`` is the flow's image of the base mean (eps = 0), not E_q[z], which has no closed form: a
    deterministic code, on the path the decoder is trained on.
    """

    family = "iaf"
    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, context: torch.Tensor, steps: nn.ModuleList) -> None:
        self.loc, self.log_scale, self.context, self.steps = loc, log_scale, context, steps
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def _flow(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(z.shape[:-1])
        for step in self.steps:
            z, step_log_det = step(z, self.context)
            log_det = log_det + step_log_det
        return z, log_det

    def reparameterize(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_det = self._flow(self.loc + eps * self.log_scale.exp())
        return z, standard_normal_log_prob(eps) - self.log_scale.sum(-1) - log_det

    @property
    def mean(self) -> torch.Tensor:
        return self._flow(self.loc)[0]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "the iaf posterior's density at an arbitrary z needs the flow inverted; "
            "log q at its own samples comes from reparameterize / rsample_and_log_prob"
        )


class InverseAutoregressiveFlow(nn.Module):
    """q(z|x): a diagonal Gaussian N(mu, diag sigma^2) pushed through ``steps`` IAF steps conditioned
    on a context h; the encoder outputs mu, log sigma^2 and h (``hidden`` numbers). The steps' MADEs
    are this module's parameters, so they are trained and saved with the model."""

    def __init__(self, latent_dim: int, steps: int, hidden: int) -> None:
        super().__init__()
        self.context_size = hidden
        self.steps = iaf_steps(latent_dim, steps, hidden, self.context_size)

    def param_size(self, latent_dim: int) -> int:
        return 2 * latent_dim + self.context_size

    def forward(self, params: torch.Tensor) -> FlowGaussian:
        mu_and_log_var, context = params.split([params.shape[-1] - self.context_size, self.context_size], dim=-1)
        mu, log_var = mu_and_log_var.chunk(2, dim=-1)
        return FlowGaussian(mu, 0.5 * log_var, context, self.steps)


def flow_hidden(config) -> int:
    """The MADEs' hidden width (and the context size): model.flow_hidden, or max(64, 4d) when it is 0."""
    return config.flow_hidden or max(64, 4 * config.latent_dim)


@POSTERIORS.register(
    "iaf", "inverse autoregressive flow (Kingma et al. 2016): model.flow_steps MADE steps on a diagonal Gaussian"
)
def _iaf(config, prior: nn.Module) -> InverseAutoregressiveFlow:
    refuse_study_sampling(config, "iaf")
    if config.prior == "vamp":
        raise VaelabError(
            "model.prior = vamp is a mixture of posteriors, which needs their density at any z; "
            "model.posterior = iaf gives it only at its own samples (use diagonal or full)"
        )
    return InverseAutoregressiveFlow(config.latent_dim, config.flow_steps, flow_hidden(config))
