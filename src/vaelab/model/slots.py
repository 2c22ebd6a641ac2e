"""What the families built from the registries' slots share: an encoder network whose output the
posterior family reads, a prior, a decoder network whose output the likelihood reads."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Distribution, Normal

from vaelab.distributions.kl import diagonal_normal_parts, kl_and_sample
from vaelab.model.base import CodeDensities, Context, ElboParts, LatentVariableModel, LogWeights, Unsupported

Likelihood = Callable[[torch.Tensor], Distribution]  # codes (... x d) -> p(x | z, whatever the family conditions on)


class SlotModel(LatentVariableModel):
    """Holds the five slots (``vaelab.core.registry``) and the two networks the precision policy runs."""

    def __init__(
        self,
        encoder: nn.Module,
        posterior: nn.Module,
        prior: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        latent_dim: int,
        image_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.posterior = posterior
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)

    def networks(self) -> list[nn.Module]:
        return [self.encoder, self.decoder]

    def slot_elbo(self, x: torch.Tensor, ctx: Context, q, p_x: Likelihood) -> ElboParts:
        """The ELBO's parts for the posterior ``q`` of ``x`` and the likelihood ``p_x``: one reparameterised
        sample, the KL in closed form where one is registered."""
        return self.slot_sampled_elbo(x, ctx, q, p_x)[0]

    def slot_sampled_elbo(self, x: torch.Tensor, ctx: Context, q, p_x: Likelihood) -> tuple[ElboParts, torch.Tensor]:
        """:meth:`slot_elbo`'s parts and the sample z (B x d) they were taken at."""
        eps = ctx.noise((len(x), self.latent_dim), x)
        if not len(x):  # an empty shard: its share of the noise is drawn, nothing to decode
            return ElboParts(x.new_zeros(0), x.new_zeros(0)), eps
        z, log_q = q.reparameterize(eps)
        reconstruction = -p_x(z).log_prob(x)
        kl, kl_per_dim = kl_and_sample(q, self.p_z(), z, log_q)
        return ElboParts(reconstruction, kl, kl_per_dim), z

    def slot_code_densities(self, parts: ElboParts, z: torch.Tensor, q) -> CodeDensities:
        """The codes ``z`` (B x d, drawn from ``q``, a diagonal Gaussian) under every example's posterior
        and under the prior, dimension by dimension."""
        q_parts, p = diagonal_normal_parts(q), self.p_z()
        if q_parts is None:
            raise Unsupported(
                f"the {getattr(q, 'family', '') or type(q).__name__} posterior does not factorise over latent "
                "dimensions, which the estimate of q(z) and its marginals needs: use model.posterior = diagonal"
            )
        if diagonal_normal_parts(p) is None:
            raise Unsupported(
                "this prior does not factorise over latent dimensions, which the dimension-wise KL needs: "
                "use model.prior = standard or learnable"
            )
        loc, scale = q_parts
        log_q_pairs = Normal(loc.unsqueeze(0), scale.unsqueeze(0)).log_prob(z.unsqueeze(1))  # [i, j]: z_i under x_j
        return CodeDensities(parts, z, log_q_pairs, p.base_dist.log_prob(z), (loc, scale))

    def slot_log_weights(
        self,
        x: torch.Tensor,
        k: int,
        ctx: Context,
        q,
        p_x: Likelihood,
        dreg_path: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> LogWeights:
        """log p(x|z_i) + log p(z_i) - log q(z_i|x) for k samples z_i ~ q (k x B), ``q`` the proposal. With
        ``dreg_path`` (the doubly reparameterised gradient) z passes through it and log q is taken with
        q's parameters held fixed."""
        eps = ctx.noise((k, len(x), self.latent_dim), x)
        if not len(x):  # an empty shard: its share of the noise is drawn, nothing to decode
            return LogWeights(x.new_zeros(k, 0), ElboParts(x.new_zeros(0), x.new_zeros(0)))
        z, log_q = q.reparameterize(eps)
        z_path = z
        if dreg_path is not None:
            z_path = dreg_path(z)
            log_q = q.detached().log_prob(z_path)
        log_px_z = p_x(z_path).log_prob(x)
        prior = self.p_z()
        log_w = log_px_z + prior.log_prob(z_path) - log_q
        kl, kl_per_dim = kl_and_sample(q, prior, z[0].detach(), log_q[0].detach())
        return LogWeights(log_w, ElboParts(-log_px_z[0], kl, kl_per_dim))

    @torch.no_grad()
    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the decoder's output bias where p(x|z) has mean ``mean_image`` (C x H x W; the conv
        decoder, with one bias per channel, matches each channel's mean intensity). The net then
        learns departures from the data mean instead of spending its first steps finding it, which
        shows in the end result (README, Burda reproductions)."""
        self.decoder.set_output_bias(mean_image, self.likelihood.output_for_mean)
