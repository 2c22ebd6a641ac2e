"""The VAE: encoder -> posterior family q(z|x), prior p(z), decoder -> likelihood p(x|z).

The class only composes the five pieces; what is optimised lives in ``objectives``.

Mixed precision (``with model.networks_in(torch.bfloat16):``) runs the encoder and decoder under
autocast and hands their outputs on in fp32: posterior, prior, likelihood, sampling noise, the
losses and the KL are computed in fp32 whatever the networks' precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributions import Distribution


class VAE(nn.Module):
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
        self.network_dtype: torch.dtype | None = None  # None: the networks run in fp32

    @contextmanager
    def networks_in(self, dtype: torch.dtype | None) -> Iterator[VAE]:
        """Run the encoder and decoder under autocast to ``dtype`` (None: full precision) meanwhile."""
        saved, self.network_dtype = self.network_dtype, dtype
        try:
            yield self
        finally:
            self.network_dtype = saved

    def _run(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.network_dtype is None:
            return net(x)
        with torch.autocast(x.device.type, dtype=self.network_dtype):
            out = net(x)
        return out.float()

    def q_z(self, x: torch.Tensor) -> Distribution:
        """The approximate posterior q(z | x) for a batch of images."""
        return self.posterior(self._run(self.encoder, x))

    def p_z(self) -> Distribution:
        """The prior p(z); it is handed q_z, which priors built from the posterior (VampPrior) use."""
        return self.prior(self.q_z)

    def p_x(self, z: torch.Tensor) -> Distribution:
        """p(x | z); ``z`` may carry leading sample dimensions (S x B x d), which are kept."""
        lead = z.shape[:-1]
        out = self._run(self.decoder, z.reshape(-1, z.shape[-1]))
        return self.likelihood(out.reshape(*lead, *out.shape[1:]))

    @torch.no_grad()
    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the decoder's output bias where p(x|z) has mean ``mean_image`` (C x H x W; the conv
        decoder, with one bias per channel, matches each channel's mean intensity). The net then
        learns departures from the data mean instead of spending its first steps finding it, which
        shows in the end result (README, Burda reproductions)."""
        self.decoder.set_output_bias(mean_image, self.likelihood.output_for_mean)

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
