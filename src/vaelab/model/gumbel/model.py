"""A continuous and a categorical latent (JointVAE, Dupont 2018), the categorical one relaxed by Gumbel-softmax.

q(z, c | x) = N(z; mu(x), diag sigma(x)^2) Cat(c; softmax(logits(x))), p(z, c) = p(z) Uniform(K),
p(x | z, c) through a decoder fed [z, one-hot c]. One encoder gives the Gaussian's parameters and the
K logits; ``model.classes`` is K, ``model.latent_dim`` the continuous dimensions.

Training (Jang et al. 2017; Maddison et al. 2017): the decoder sees the Concrete sample
softmax((logits + g) / tau), g Gumbel noise made from the step's standard normal noise (so data-parallel
training and evaluation draw it as they draw every other noise), with tau annealed per training step,
tau = max(TAU_MIN, exp(-ANNEAL_RATE * step)) (their schedule, without the 500-step staircase); the KL of
the categorical part is the exact one against the uniform prior. That relaxed bound is what is optimised;
in eval mode the expectation over c is taken exactly instead (K decodes per image), so validation and
test numbers are the true ELBO.

``condition(c)`` fixes the category (figures: one row per category; ``vaelab sample --label c``),
``discrete_code(x)`` is argmax_c q(c | x) (the clustering accuracy against the labels).
Its KL comes in two named parts, ``continuous`` (z's) and ``categorical`` (c's, at most log K nats):
``kl_part_bounds()`` and ``ElboParts.kl_parts``, what per-part capacities (JointVAE's loss) pull on.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from vaelab.distributions.kl import kl_and_sample
from vaelab.errors import VaelabError
from vaelab.model.base import Context, ElboParts
from vaelab.model.conditioning import DiscreteInput, Labels
from vaelab.model.slots import SlotModel

TAU_MIN = 0.5  # Jang et al.'s floor
ANNEAL_RATE = 1e-4  # per training step; reaches TAU_MIN after ~6,900 steps (16 MNIST epochs at batch 128)
UNIFORM_CLAMP = 1e-6  # keeps -log(-log u) finite


def _no_unlabelled_posterior(x: torch.Tensor) -> Distribution:
    raise VaelabError(
        "a prior built from the posterior (model.prior = vamp) does not apply to the gumbel family: choose another"
    )


def gumbel_from_normal(eps: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from standard normal noise: u = Phi(eps) is uniform, g = -log(-log u)."""
    u = (0.5 * (1 + torch.erf(eps / math.sqrt(2)))).clamp(UNIFORM_CLAMP, 1 - UNIFORM_CLAMP)
    return -torch.log(-torch.log(u))


class GumbelSoftmaxVAE(DiscreteInput, SlotModel):
    family = "gumbel"
    condition_name = "category"

    def __init__(
        self,
        encoder: nn.Module,
        posterior: nn.Module,
        prior: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        categories: int,
    ) -> None:
        super().__init__(encoder, posterior, prior, decoder, likelihood, latent_dim, image_shape)
        self.classes = categories
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # training steps, for the temperature

    @property
    def temperature(self) -> float:
        return max(TAU_MIN, math.exp(-ANNEAL_RATE * int(self.steps)))

    def q(self, x: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        """q(z | x) and the K logits of q(c | x)."""
        out = self.run_network(self.encoder, x)
        return self.posterior(out[:, : -self.classes]), out[:, -self.classes :]

    def p_z(self) -> Distribution:
        return self.prior(_no_unlabelled_posterior)

    def p_x(self, z: torch.Tensor, c: torch.Tensor) -> Distribution:
        """p(x | z, c) for codes ``z`` (... x d) and category vectors ``c`` (... x K, one-hot or relaxed)."""
        code = torch.cat([z, c], -1)
        out = self.run_network(self.decoder, code.reshape(-1, code.shape[-1]))
        return self.likelihood(out.reshape(*code.shape[:-1], *out.shape[1:]))

    def elbo(self, x: torch.Tensor, ctx: Context) -> ElboParts:
        q_z, logits = self.q(x)
        eps = ctx.noise((len(x), self.latent_dim), x)
        eps_c = ctx.noise((len(x), self.classes), x)
        if not len(x):
            return ElboParts(x.new_zeros(0), x.new_zeros(0))
        z, log_q = q_z.reparameterize(eps)
        kl_z, _ = kl_and_sample(q_z, self.p_z(), z, log_q)
        log_q_c = F.log_softmax(logits, -1)
        kl_c = (log_q_c.exp() * (log_q_c + math.log(self.classes))).sum(-1)  # KL(q(c|x) || Uniform(K)), exact
        if self.training:
            relaxed = F.softmax((logits + gumbel_from_normal(eps_c)) / self.temperature, -1)
            reconstruction = -self.p_x(z, relaxed).log_prob(x)
            self.steps += 1
        else:  # E_q(c|x) exactly: every category decoded
            every = torch.eye(self.classes, dtype=x.dtype, device=x.device)[:, None].expand(-1, len(x), -1)
            log_px = self.p_x(z.expand(self.classes, -1, -1), every).log_prob(x)  # K x B
            reconstruction = -(log_q_c.exp().T * log_px).sum(0)
        extra = {"kl_continuous": kl_z, "kl_categorical": kl_c}
        return ElboParts(reconstruction, kl_z + kl_c, None, extra, kl_parts={"continuous": kl_z, "categorical": kl_c})

    def kl_part_bounds(self) -> dict[str, float]:
        """z's KL is unbounded; c's against the uniform prior is at most log K (q(c | x) one-hot)."""
        return {"continuous": math.inf, "categorical": math.log(self.classes)}

    @torch.no_grad()
    def discrete_code(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_c q(c | x) for each image."""
        return self.q(x)[1].argmax(-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, labels: Labels = None) -> torch.Tensor:
        """The continuous part's posterior means E_q[z | x] (``labels`` is ignored: q does not take c)."""
        return self.q(x)[0].mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels: Labels = None) -> torch.Tensor:
        """The likelihood's mean image for each code under its category."""
        c = self.check_labels(labels, len(z), "decodes a code")
        return self.p_x(z, self.one_hot(c, z)).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: Labels = None) -> torch.Tensor:
        """Mean images of ``n`` draws z ~ p(z) under ``labels`` (default: the categories in turn)."""
        c = self.check_labels(torch.arange(n) % self.classes if labels is None else labels, n, "samples")
        z = self.p_z().sample((n,)) if generator is None else self.prior.sample(n, generator, _no_unlabelled_posterior)
        return self.decode(z, c)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: Labels = None) -> torch.Tensor:
        """Decoded posterior means under the most probable category (or ``labels``)."""
        q_z, logits = self.q(x)
        return self.decode(q_z.mean, logits.argmax(-1) if labels is None else labels)
