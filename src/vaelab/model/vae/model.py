"""The VAE: encoder -> posterior family q(z|x), prior p(z), decoder -> likelihood p(x|z).

The class composes the five pieces and offers the protocol of ``vaelab.model.base``: the ELBO's
parts, the importance log-weights, encode / decode / sample. What is optimised lives in ``objectives``.

Mixed precision (``with model.networks_in(torch.bfloat16):``) runs the encoder and decoder under
autocast and hands their outputs on in fp32: posterior, prior, likelihood, sampling noise, the
losses and the KL are computed in fp32 whatever the networks' precision.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab.errors import VaelabError
from vaelab.model.base import EXPORT_PARTS, CodeDensities, Context, ElboParts, ExportPart, LogWeights
from vaelab.model.slots import SlotModel
from vaelab.nets.accel import plain_copy


class VAE(SlotModel):
    family = "vae"

    def q_z(self, x: torch.Tensor) -> Distribution:
        """The approximate posterior q(z | x) for a batch of images."""
        return self.posterior(self.run_network(self.encoder, x))

    def p_z(self) -> Distribution:
        """The prior p(z); it is handed q_z, which priors built from the posterior (VampPrior) use."""
        return self.prior(self.q_z)

    def p_x(self, z: torch.Tensor) -> Distribution:
        """p(x | z); ``z`` may carry leading sample dimensions (S x B x d), which are kept."""
        lead = z.shape[:-1]
        out = self.run_network(self.decoder, z.reshape(-1, z.shape[-1]))
        return self.likelihood(out.reshape(*lead, *out.shape[1:]))

    def sampled_elbo(self, x: torch.Tensor, ctx: Context) -> tuple[ElboParts, torch.Tensor, Distribution]:
        """The ELBO's parts, the sample z they were taken at, and q(z | x)."""
        q = self.q_z(x)
        parts, z = self.slot_sampled_elbo(x, ctx, q, self.p_x)
        return parts, z, q

    def elbo(self, x: torch.Tensor, ctx: Context) -> ElboParts:
        return self.sampled_elbo(x, ctx)[0]

    def code_densities(self, x: torch.Tensor, ctx: Context) -> CodeDensities:
        """The ELBO's parts at z_i ~ q(z | x_i), with every z_i's density under every x_j's posterior and the
        prior's, dimension by dimension (a diagonal Gaussian posterior and a factorised prior)."""
        parts, z, q = self.sampled_elbo(x, ctx)
        return self.slot_code_densities(parts, z, q)

    def log_weights(
        self, x: torch.Tensor, k: int, ctx: Context, dreg_path: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> LogWeights:
        # the proposal: the density its samples follow (the study's sampler's is not its own)
        return self.slot_log_weights(x, k, ctx, self.q_z(x).proposal(), self.p_x, dreg_path)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means E_q[z | x] (what the latent scatter plots show)."""
        return self.q_z(x).mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean image for each z (what the manifold grids show)."""
        return self.p_x(z).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images decoded from ``n`` prior samples (drawn from ``generator`` if given)."""
        z = self.p_z().sample((n,)) if generator is None else self.prior.sample(n, generator, self.q_z)
        return self.decode(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and per-dimension standard deviation for each image (B x d each)."""
        return _mean_and_scale(self.q_z(x))

    def export_part(self, part: str) -> ExportPart:
        """``encoder``: images -> (mean, scale, encoder_output); ``decoder``: codes -> (mean image,
        decoder_output). The networks are copies with torch's plain layers (no CPU speed tricks)."""
        if part == "encoder":
            example = torch.rand(2, *self.image_shape)
            training = self.training
            self.eval()  # random images must not move batch-norm statistics
            try:
                with torch.no_grad():
                    _mean_and_scale(self.q_z(example))  # refuse a posterior without a scale before any work
            finally:
                self.train(training)
            module = _EncoderPart(plain_copy(self.encoder), copy.deepcopy(self.posterior))
            return ExportPart(module.eval(), self.encoder, "x", ("mean", "scale", "encoder_output"), example)
        if part == "decoder":
            module = _DecoderPart(plain_copy(self.decoder), copy.deepcopy(self.likelihood))
            return ExportPart(
                module.eval(), self.decoder, "z", ("mean", "decoder_output"), torch.randn(2, self.latent_dim)
            )
        raise VaelabError(f"unknown part {part!r}; choose one of {', '.join(EXPORT_PARTS)}")


def _mean_and_scale(q: Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return q.mean, q.stddev
    except NotImplementedError:
        raise VaelabError(
            f"the {getattr(q, 'family', '') or type(q).__name__} posterior has no closed-form mean and scale "
            "(its q(z|x) is not a Gaussian), so it has no features and no exportable encoder; the decoder exports"
        ) from None


class _EncoderPart(nn.Module):
    def __init__(self, network: nn.Module, posterior: nn.Module) -> None:
        super().__init__()
        self.network, self.posterior = network, posterior

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.network(x)
        mean, scale = _mean_and_scale(self.posterior(out))
        return mean, scale, out


class _DecoderPart(nn.Module):
    def __init__(self, network: nn.Module, likelihood: nn.Module) -> None:
        super().__init__()
        self.network, self.likelihood = network, likelihood

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network(z)
        return self.likelihood(out).mean.clamp(0, 1), out
