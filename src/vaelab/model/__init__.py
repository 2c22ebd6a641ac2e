"""The model: a VAE composed from nets and distributions, its objectives, and its files."""

from vaelab.model.build import build_vae
from vaelab.model.objectives import ELBO, IWAE, Shard, Terms, make_objective
from vaelab.model.store import load_model, save_model
from vaelab.model.vae import VAE

__all__ = ["ELBO", "IWAE", "VAE", "Shard", "Terms", "build_vae", "load_model", "make_objective", "save_model"]
