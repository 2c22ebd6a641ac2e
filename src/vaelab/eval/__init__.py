"""Evaluation: bounds on the test log-likelihood and analysis metrics."""

from vaelab.eval.analysis import (
    active_units,
    knn_accuracy,
    latent_analysis,
    latent_means,
    logistic_probe_accuracy,
    posterior_collapse,
    silhouette,
)
from vaelab.eval.bound import evaluate_elbo, evaluation_seed
from vaelab.eval.frechet import frechet_distance, frechet_distance_of_features, sample_frechet_distance
from vaelab.eval.nll import estimate_log_likelihood, iwae_bound

__all__ = [
    "active_units",
    "estimate_log_likelihood",
    "evaluate_elbo",
    "evaluation_seed",
    "frechet_distance",
    "frechet_distance_of_features",
    "iwae_bound",
    "knn_accuracy",
    "latent_analysis",
    "latent_means",
    "logistic_probe_accuracy",
    "posterior_collapse",
    "sample_frechet_distance",
    "silhouette",
]
