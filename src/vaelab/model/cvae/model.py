"""The conditional VAE (Sohn et al. 2015): q(z | x, y), p(z), p(x | z, y), with y one of ``classes`` labels.

The label enters both networks one-hot: as ``classes`` constant channels beside the encoder's input
image, and beside z at the decoder's input. So any registered architecture serves unchanged, built
for C + K input channels and a latent_dim + K input; the posterior, prior and likelihood come from
their registries as for the VAE. The bound is on log p(x | y).

Training and evaluation hand the batch's labels in through ``Context.labels``. ``encode``, ``decode``,
``sample`` and ``reconstruct`` take ``labels=`` (one label for all, or one per example), and
:meth:`CVAE.condition` fixes them for code that knows only the plain protocol. Without labels,
``sample`` draws the classes in turn (0, 1, ..., K-1, 0, ...: the marginal under a uniform p(y)), and
``encode``, ``decode`` and ``reconstruct`` refuse in one line.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab.errors import VaelabError
from vaelab.model.base import Context, ElboParts, LogWeights
from vaelab.model.conditioning import DiscreteInput, Labels
from vaelab.model.slots import SlotModel

_BATCH_LABELS = "the batches carry none (a data set without labels cannot train or evaluate it)"


def _no_unlabelled_posterior(x: torch.Tensor) -> Distribution:
    raise VaelabError(
        "a prior built from the posterior (model.prior = vamp) needs q(z | x) without a label; "
        "the cvae family's posterior takes one: choose another model.prior"
    )


class CVAE(DiscreteInput, SlotModel):
    family = "cvae"
    takes_labels = True

    def __init__(
        self,
        encoder: nn.Module,
        posterior: nn.Module,
        prior: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        classes: int,
    ) -> None:
        super().__init__(encoder, posterior, prior, decoder, likelihood, latent_dim, image_shape)
        self.classes = classes

    # ------------------------------------------------------------------------------ distributions

    def q_z(self, x: torch.Tensor, labels: torch.Tensor) -> Distribution:
        """q(z | x, y): the label as K constant channels beside the image."""
        _, h, w = self.image_shape
        channels = self.one_hot(labels, x)[:, :, None, None].expand(-1, -1, h, w)
        return self.posterior(self.run_network(self.encoder, torch.cat([x, channels], 1)))

    def p_z(self) -> Distribution:
        return self.prior(_no_unlabelled_posterior)

    def p_x(self, z: torch.Tensor, labels: torch.Tensor) -> Distribution:
        """p(x | z, y); ``z`` may carry leading sample dimensions (S x B x d), which are kept."""
        lead = z.shape[:-1]
        code = torch.cat([z, self.one_hot(labels, z).expand(*lead, -1)], -1)
        out = self.run_network(self.decoder, code.reshape(-1, code.shape[-1]))
        return self.likelihood(out.reshape(*lead, *out.shape[1:]))

    # ---------------------------------------------------------------------------------- bounds

    def elbo(self, x: torch.Tensor, ctx: Context) -> ElboParts:
        labels = self.check_labels(ctx.labels, len(x), "trains and is evaluated", _BATCH_LABELS)
        return self.slot_elbo(x, ctx, self.q_z(x, labels), lambda z: self.p_x(z, labels))

    def log_weights(
        self, x: torch.Tensor, k: int, ctx: Context, dreg_path: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> LogWeights:
        """log p(x|z_i, y) + log p(z_i) - log q(z_i|x, y) for k samples z_i ~ q (k x B), as the VAE's."""
        labels = self.check_labels(ctx.labels, len(x), "is importance-sampled", _BATCH_LABELS)
        q = self.q_z(x, labels).proposal()
        return self.slot_log_weights(x, k, ctx, q, lambda z: self.p_x(z, labels), dreg_path)

    # ----------------------------------------------------------------------- encode, decode, sample

    @torch.no_grad()
    def encode(self, x: torch.Tensor, labels: Labels = None) -> torch.Tensor:
        """Posterior means E_q[z | x, y]."""
        return self.q_z(x, self.check_labels(labels, len(x), "encodes an image")).mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels: Labels = None) -> torch.Tensor:
        """The likelihood's mean image for each code under its label."""
        return self.p_x(z, self.check_labels(labels, len(z), "decodes a code")).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: Labels = None) -> torch.Tensor:
        """Mean images decoded from ``n`` prior samples under ``labels`` (default: the classes in turn)."""
        if labels is None:
            labels = torch.arange(n) % self.classes
        labels = self.check_labels(labels, n, "samples")
        z = self.p_z().sample((n,)) if generator is None else self.prior.sample(n, generator, _no_unlabelled_posterior)
        return self.decode(z, labels)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: Labels = None) -> torch.Tensor:
        labels = self.check_labels(labels, len(x), "reconstructs an image")
        return self.decode(self.encode(x, labels), labels)
