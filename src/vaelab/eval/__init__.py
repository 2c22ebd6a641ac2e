"""Evaluation: bounds on the test log-likelihood and analysis metrics."""

from vaelab.eval.bound import evaluate_elbo

__all__ = ["evaluate_elbo"]
