"""FactorVAE (Kim & Mnih 2018, "Disentangling by factorising"): the VAE with its codes' total correlation
penalised, the total correlation estimated by a discriminator.

TC(z) = KL(q(z) || prod_k q(z_k)) = E_q(z)[log q(z) / prod_k q(z_k)]. A discriminator D tells codes
z ~ q(z) (class 0) from codes whose dimensions were shuffled independently across examples (class 1,
samples of prod_k q(z_k)); at its optimum D's logit difference l_0(z) - l_1(z) is the log density ratio,
so TC ~ E_q(z)[l_0(z) - l_1(z)]. Per example, besides the ELBO's parts, ``ElboParts.penalty`` holds
(training mode only; evaluation gives the ELBO alone):

* gamma * [l_0(z_i) - l_1(z_i)], with D's parameters held fixed (``torch.func.functional_call`` on
  detached parameters): its gradient reaches the encoder, never the discriminator;
* D's cross-entropy on detached codes: the batch's first half as they are (class 0), the second half
  with each dimension permuted across its rows (class 1): its gradient reaches the discriminator only.

So one backward pass and one optimiser step train both as Kim & Mnih's two alternating updates do. Their
separate Adam for D (betas 0.5, 0.9) is D's parameter group (:meth:`parameter_groups`); its learning rate
is the run's, as theirs is (1e-4 for both). They draw the permuted codes from a second batch; the two
halves of one batch stand in for the two batches here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Distribution
from torch.func import functional_call
from torch.nn import functional as F

from vaelab.errors import VaelabError
from vaelab.model.base import Context, ElboParts, LogWeights
from vaelab.model.vae.model import VAE

LEAKY_SLOPE = 0.2  # TensorFlow's leaky_relu default, which Kim & Mnih's and disentanglement_lib's code used
DISCRIMINATOR_BETAS = (0.5, 0.9)  # Kim & Mnih, Appendix A: the discriminator's Adam


def discriminator_network(latent_dim: int, hidden: list[int]) -> nn.Sequential:
    """z -> hidden widths, leaky ReLU after each -> 2 logits (Kim & Mnih: 6 layers of 1000)."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip([latent_dim, *hidden[:-1]], hidden):
        layers += [nn.Linear(width_in, width_out), nn.LeakyReLU(LEAKY_SLOPE)]
    return nn.Sequential(*layers, nn.Linear(hidden[-1], 2))


def permute_dims(z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Each column of ``z`` (n x d) shuffled across rows on its own, the order of column k being the
    argsort of ``noise[:, k]`` (n x d standard normal noise: a uniformly random permutation)."""
    return z.gather(0, noise.argsort(0))


class FactorVAE(VAE):
    family = "factorvae"

    def __init__(
        self,
        encoder: nn.Module,
        posterior: nn.Module,
        prior: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        tc_weight: float,
        discriminator_hidden: list[int],
    ) -> None:
        super().__init__(encoder, posterior, prior, decoder, likelihood, latent_dim, image_shape)
        self.tc_weight = tc_weight
        self.discriminator = discriminator_network(latent_dim, list(discriminator_hidden))

    def parameter_groups(self) -> list[dict]:
        """The VAE's parameters with the run's Adam settings; the discriminator's with Kim & Mnih's betas."""
        own = {id(p) for p in self.discriminator.parameters()}
        return [
            {"params": [p for p in self.parameters() if id(p) not in own]},
            {"params": list(self.discriminator.parameters()), "betas": DISCRIMINATOR_BETAS},
        ]

    def total_correlation(self, z: torch.Tensor) -> torch.Tensor:
        """D's estimate l_0(z) - l_1(z) per code, D held fixed: a gradient reaches z only."""
        fixed = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        logits = functional_call(self.discriminator, fixed, (z,))
        return logits[:, 0] - logits[:, 1]

    def discriminator_loss(self, z: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Per example, D's cross-entropy on the detached codes: the first half labelled "from q(z)", the
        second half, permuted dimension by dimension, "from prod_k q(z_k)"; weighted so that the batch mean
        is the mean of the two halves' means (the two classes count equally, as in Kim & Mnih)."""
        n, half = len(z), len(z) // 2
        codes = z.detach()
        permuted = permute_dims(codes[half:], ctx.noise(tuple(z.shape), z)[half:])
        labels = torch.cat([z.new_zeros(half, dtype=torch.long), z.new_ones(n - half, dtype=torch.long)])
        cross_entropy = F.cross_entropy(
            self.discriminator(torch.cat([codes[:half], permuted])), labels, reduction="none"
        )
        weights = torch.where(labels == 0, n / (2 * max(half, 1)), n / (2 * (n - half)))
        return cross_entropy * weights

    def sampled_elbo(self, x: torch.Tensor, ctx: Context) -> tuple[ElboParts, torch.Tensor, Distribution]:
        parts, z, q = super().sampled_elbo(x, ctx)
        if self.training and len(x):
            if ctx.shard is not None:
                raise VaelabError(
                    "the factorvae family's discriminator compares codes across the whole batch: "
                    "data-parallel training is not supported"
                )
            tc = self.total_correlation(z)
            discriminator = self.discriminator_loss(z, ctx)
            parts.penalty = self.tc_weight * tc + discriminator
            parts.extra = {**parts.extra, "total_correlation": tc.detach(), "discriminator": discriminator.detach()}
        return parts, z, q

    def log_weights(
        self, x: torch.Tensor, k: int, ctx: Context, dreg_path: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> LogWeights:
        if self.training:  # the bound alone would train neither the penalty nor the discriminator
            raise VaelabError(
                "the factorvae family trains with objective.name = elbo, capacity or btcvae, whose loss carries its "
                "discriminator's terms; iwae would leave them out (its importance weights serve evaluation: eval --nll)"
            )
        return super().log_weights(x, k, ctx, dreg_path)
