"""Build the model a :class:`~vaelab.config.ModelConfig` names: its family's registered builder
(``vaelab.core.registry.FAMILIES``), and the memory check the families that compose the registries'
slots (architecture, posterior, prior, likelihood) share.

Adding a family or a variant means registering it where it is defined; nothing here changes.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from vaelab.config import ModelConfig
from vaelab.core.memory import require_memory
from vaelab.core.registry import ARCHITECTURES, FAMILIES, LIKELIHOODS, POSTERIORS, PRIORS
from vaelab.errors import VaelabError
from vaelab.model.base import LatentVariableModel

ImageShape = tuple[int, int, int]
_SIZE_KEYS = "model.latent_dim, model.hidden or train.batch_size"


def check_memory(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> None:
    """Refuse, before anything is allocated, a model that would not train in the memory available:
    its weights with their gradients and Adam's two moments (4 float32 copies), and roughly the
    activations of ``batch`` images (every layer's output, kept for the backward pass, and its gradient).

    The networks are built and run on torch's meta device, which computes shapes and allocates nothing.
    """
    try:
        with torch.device("meta"):
            likelihood = LIKELIHOODS.get(config.likelihood)(config, image_shape)
            # the correlated prior checks its covariance's values, which the meta device does not hold
            prior = PRIORS.get(config.prior)(config, image_shape) if config.prior != "correlated" else None
            # the posterior reads no more of its prior than a shape (the study's sampler: its Cholesky factor)
            shape_of_prior = prior or SimpleNamespace(scale_tril=torch.empty(config.latent_dim, config.latent_dim))
            posterior = POSTERIORS.get(config.posterior)(config, shape_of_prior)
            nets = ARCHITECTURES.get(config.arch)(
                config,
                image_shape,
                posterior.param_size(config.latent_dim),
                image_shape[0] * likelihood.params_per_channel,
            )
            outputs: list[int] = []
            for layer in (m for net in nets for m in net.modules() if not any(m.children())):
                layer.register_forward_hook(lambda _layer, _input, out: outputs.append(out.numel()))
            nets[1](nets[0](torch.empty(1, *image_shape))[:, : config.latent_dim])
    except (RuntimeError, TypeError, OverflowError) as err:  # sizes torch cannot even count in 64 bits
        reason = str(err).partition("\n")[0]
        raise VaelabError(
            f"a {config.arch} model of latent_dim {config.latent_dim} on images of {tuple(image_shape)} is too large "
            f"to allocate ({reason}); lower {_SIZE_KEYS}"
        ) from None
    parts = (*nets, posterior, likelihood, prior)
    weights = sum(p.numel() for part in parts if part is not None for p in part.parameters())
    if prior is None:  # a full covariance and its Cholesky factor
        weights += 2 * config.latent_dim**2
    require_memory(
        4 * (4 * weights + 2 * batch * sum(outputs)),
        f"a {config.arch} model of {weights:,} weights (latent_dim {config.latent_dim}) trained on batches of "
        f"{batch} images of {tuple(image_shape)}",
        f"lower {_SIZE_KEYS}",
    )


def build_model(config: ModelConfig, image_shape: ImageShape, batch: int = 1) -> LatentVariableModel:
    """The model of the family ``config.family`` names, as its registered builder makes it."""
    config.validate()
    return FAMILIES.get(config.family)(config, image_shape, batch)
