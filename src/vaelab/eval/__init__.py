"""Evaluation: bounds on the test log-likelihood and analysis metrics."""

from vaelab.eval.analysis import active_units, knn_accuracy, latent_analysis, latent_means, silhouette
from vaelab.eval.bound import evaluate_elbo, evaluation_seed
from vaelab.eval.nll import estimate_log_likelihood, iwae_bound

__all__ = [
    "active_units",
    "estimate_log_likelihood",
    "evaluate_elbo",
    "evaluation_seed",
    "iwae_bound",
    "knn_accuracy",
    "latent_analysis",
    "latent_means",
    "silhouette",
]
