"""The model: the families composed from nets and distributions, their objectives, and their files."""

from vaelab.model.base import Context, LatentVariableModel, Shard, Terms, Unsupported
from vaelab.model.build import build_model
from vaelab.model.objectives import ELBO, IWAE, BetaTCVAE, CapacityELBO, build_objective, make_objective
from vaelab.model.store import load_model, save_model
from vaelab.model.vae import VAE, build_vae

__all__ = [
    "ELBO",
    "IWAE",
    "BetaTCVAE",
    "CapacityELBO",
    "VAE",
    "Context",
    "LatentVariableModel",
    "Shard",
    "Terms",
    "Unsupported",
    "build_model",
    "build_objective",
    "build_vae",
    "load_model",
    "make_objective",
    "save_model",
]
