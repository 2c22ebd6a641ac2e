"""What the families built from the registries' slots share: an encoder network whose output the
posterior family reads, a prior, a decoder network whose output the likelihood reads."""

from __future__ import annotations

from torch import nn

from vaelab.model.base import LatentVariableModel


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
