"""The model protocol: what the trainer, the objectives, the evaluation, the figures and the store ask of a model.

A latent-variable model trained by amortised variational inference offers some of:

* ``elbo(x, ctx) -> ElboParts``: per-example reconstruction -E_q[log p(x|z)] and KL(q || p) in nats
  (what the ELBO objective weighs and reports);
* ``log_weights(x, k, ctx, dreg_path=None) -> LogWeights``: k importance log-weights
  log p(x, z_i) - log q(z_i | x) per example (what the IWAE objective trains on and the NLL estimates);
  with ``dreg_path`` (DReG) all the sampled codes pass through it once, and log q is taken at them with
  q's parameters (the weights that make q) held fixed, its dependence on the codes kept;
* ``encode`` / ``decode`` / ``sample`` / ``reconstruct`` (figures, probes, Fréchet distance);
* ``q_z(x) -> Distribution``: the posterior over the code ``encode`` gives (its mean) and ``decode``
  takes, from images alone (a hierarchy: its top layer's, the layers below at their means; cvae's
  also takes the labels); what the explorer's scatter and encoding show;
* ``networks()``: the modules that may run in reduced precision (the training's precision policy);
* ``features(x) -> (mean, scale)``: the posterior's location and per-dimension scale (a feature extractor;
  a hierarchy gives every layer's, bottom to top, the top layer's last);
* ``export_part(part) -> ExportPart``: a plain torch module of the ``encoder`` (images -> mean, scale of
  ``q_z``) or the ``decoder`` (codes -> mean images, as ``decode``), for ``vaelab export``.
* ``condition(labels) -> LatentVariableModel``: a family that decodes under one of ``classes`` discrete
  values, with them fixed (one for all examples or one per example): the data's labels for a
  conditional family (``takes_labels``: cvae), or its own discrete latent's categories (gumbel); its
  encode / decode / sample / reconstruct also take ``labels=`` (``vaelab sample --label``, the class
  figures). Training and evaluation hand the batch's labels in as ``Context.labels``;
* ``discrete_code(x)``: the most probable category of a discrete latent per image (the clustering
  accuracy against the labels).
* ``code_densities(x, ctx) -> CodeDensities``: one reparameterised code z_i per example, the ELBO's
  parts at it, the posterior's per-dimension log density log q(z_ik | x_j) of every code under every
  example of the batch (B x B x d) and the prior's log p(z_ik) per dimension: what estimators of the
  aggregate posterior q(z) need (the beta-TCVAE objective). A family whose posterior or prior does not
  factorise over dimensions refuses it;
* ``parameter_groups()``: the optimiser's parameter groups, each with the settings it departs from the
  run's in (a family that trains an adversary with its own Adam betas: factorvae). Default: one group.
* ``stages()`` and ``enter_stage(i)``: a family trained in stages (vqvae: the autoencoder and its
  codebook, then a prior over the codes) names them; the trainer runs ``train.epochs`` of the first and
  each later stage's own epochs, calling ``enter_stage`` before a stage's first epoch (and on a resume),
  which freezes what that stage does not train; it optimises what still requires a gradient.
  Default: one stage, the whole model.
* ``log_likelihood_bound(x, ctx)``: a lower bound on log p(x) per image computed without sampling, for a
  family whose posterior is deterministic (vqvae: one-hot codes, so IWAE-k equals it for every k);
  ``eval --nll`` uses it where a family has no importance weights.
* ``code_usage(x)``: how often each codebook vector is chosen over the images (a quantised code):
  the code-usage figure and the test set's codebook perplexity.
* ``kl_part_bounds() -> {name: nats}``: a family whose KL is a sum of named parts (gumbel: ``continuous``
  and ``categorical``) names them, each with the most nats it can hold (``inf``: unbounded; a K-way
  categorical against a uniform prior: log K), and reports them per example in ``ElboParts.kl_parts``
  (per-part capacities: ``objective.capacity_parts``).

A family may add terms of its own to what is minimised: ``ElboParts.penalty`` (per example, not part of
the bound) is added to the loss by the objectives built on ``elbo`` / ``code_densities`` (elbo, capacity,
btcvae) and is never part of the reported bound; such a family refuses to train on importance weights.

Every family's ``encode``, ``reconstruct``, ``features``, ``discrete_code`` and ``interpolate`` take images
as a user has them (:meth:`LatentVariableModel.as_images`: uint8 or float, a batch, one image, or flat
vectors), coerced once here for every subclass; anything else is refused in one sentence naming the
shape and dtype wanted.

A capability a family lacks raises :class:`Unsupported` (a VaelabError naming the family and what is
missing); callers that can skip a step ask :meth:`LatentVariableModel.can` first, and say what they skip.

Reparameterisation noise is drawn through the :class:`Context`, so data-parallel training passes its
noise protocol in (a :class:`Shard` draws the whole global batch's noise and keeps its rows) and the
evaluation can hand in noise it drew itself; the model never knows which.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab.errors import VaelabError


class Unsupported(VaelabError):
    """A model family without the capability a command asked for."""


@dataclass(frozen=True)
class Shard:
    """This process's rows ``start:stop`` of a global batch of ``total`` examples (data-parallel training)."""

    start: int
    stop: int
    total: int


@dataclass
class Context:
    """What a training or evaluation step hands the model besides the batch."""

    kl_weight: float = 1.0  # KL warm-up factor (1: the true bound)
    labels: torch.Tensor | None = None  # the batch's labels, for families that condition on them
    shard: Shard | None = None  # data-parallel: this process's rows of the global batch
    generators: list[torch.Generator] | None = None  # one per example: its noise whatever the batching
    step: int = 0  # training: optimiser steps taken before this one (schedules by step: the capacity's C)
    dataset_size: int = 0  # training: the number of examples batches are drawn from (0: unknown; q(z) estimators)

    def noise(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of ``shape`` (... x batch x d), with ``like``'s dtype and device.

        Under a shard the whole global batch's noise is drawn and this process keeps its rows, so every
        process's RNG stays in step with the single-process run and each example gets the very noise it
        would get there. With per-example generators (evaluation) each example's noise comes from its
        own stream. Otherwise drawn from torch's global RNG as ``Normal.rsample`` draws it.
        """
        if self.generators is not None:
            lead, d = tuple(shape[:-2]), shape[-1]
            per_example = [torch.randn((*lead, d), generator=g) for g in self.generators]
            return torch.stack(per_example, dim=-2).to(device=like.device, dtype=like.dtype)
        if self.shard is None:
            return torch.empty(shape, dtype=like.dtype, device=like.device).normal_()
        full = (*shape[:-2], self.shard.total, shape[-1])
        eps = torch.empty(full, dtype=like.dtype, device=like.device).normal_()
        return eps[..., self.shard.start : self.shard.stop, :]


@dataclass(frozen=True)
class Stage:
    """One stage of a family's training (see ``stages()``)."""

    name: str
    epochs: int | None = None  # None: train.epochs (the first stage); a later stage names its own
    summary: str = ""


@dataclass
class ElboParts:
    """Per-example terms of the ELBO, nats: -ELBO = reconstruction + kl."""

    reconstruction: torch.Tensor  # -E_q[log p(x|z)], one-sample estimate
    kl: torch.Tensor  # KL(q(z|x) || p(z)), closed form where one is registered
    kl_per_dim: torch.Tensor | None = None  # B x d where the KL factorises over dimensions
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # further named per-example terms (per layer...)
    # per example: the family's own training terms beyond the bound (factorvae's), added to whatever is minimised
    penalty: torch.Tensor | None = None
    # per example: the KL split into the named parts of kl_part_bounds(), which sum to kl (None: not split)
    kl_parts: dict[str, torch.Tensor] | None = None


@dataclass
class CodeDensities:
    """One code per example and the densities that estimate the aggregate posterior q(z) = E_x q(z|x)."""

    parts: ElboParts  # the ELBO's parts with z as the reparameterised sample
    z: torch.Tensor  # B x d, the sample z_i ~ q(z | x_i)
    log_q_pairs: torch.Tensor  # B x B x d: [i, j, k] = log q(z_ik | x_j), every code under every example's posterior
    log_p: torch.Tensor  # B x d: log p(z_ik), the prior per dimension
    posterior: tuple[torch.Tensor, torch.Tensor]  # the diagonal Gaussian posteriors' means and scales, B x d each


@dataclass
class LogWeights:
    """k importance log-weights per example, and the terms a report shows beside the bound."""

    log_w: torch.Tensor  # k x B: log p(x, z_i) - log q(z_i | x)
    parts: ElboParts  # the first sample's reconstruction and the KL, for the report


@dataclass
class Terms:
    """What one objective step returns: the scalar to minimise and named per-example terms."""

    loss: torch.Tensor  # scalar: mean over the batch of what is minimised
    total: torch.Tensor  # per example: the negative bound, nats (beta = 1, whatever is optimised)
    reconstruction: torch.Tensor  # per example, nats
    kl: torch.Tensor  # per example, nats
    kl_per_dim: torch.Tensor | None = None  # B x d where the KL factorises
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # further named per-example terms
    # the posteriors' means and scales (B x d each), for an objective that remembers them between steps
    posterior: tuple[torch.Tensor, torch.Tensor] | None = None


EXPORT_PARTS = ("encoder", "decoder")
IMAGE_INPUTS = (
    "encode",
    "reconstruct",
    "features",
    "discrete_code",
    "code_usage",
)  # methods whose first argument is images


def _taking_any_images(method: Callable) -> Callable:
    """``method(self, x, ...)`` with ``x`` coerced by ``self.as_images`` first."""

    @functools.wraps(method)
    def coerced(self, x, *args, **kwargs):
        return method(self, self.as_images(x), *args, **kwargs)

    coerced.takes_any_images = True
    return coerced


@dataclass
class ExportPart:
    """One part of a model as a plain torch module for export (ONNX): one input tensor, named outputs.

    The last output is ``network``'s own output (what the model's posterior or likelihood is built
    from), so a quality check can run the model with ``network`` replaced by the exported file.
    """

    module: nn.Module  # input -> outputs, no speed tricks, nothing but torch ops
    network: nn.Module  # the model's network (one of networks()) whose output is the last output
    input_name: str
    output_names: tuple[str, ...]
    example: torch.Tensor  # an input of the right shape (batch 2), for tracing


class LatentVariableModel(nn.Module):
    """Base of every model family: the capabilities above, each refused clearly where absent.

    A family sets ``image_shape`` (C, H, W) and ``latent_dim`` (what the store records and the figures
    lay out) and registers a builder ``(model_config, image_shape, batch) -> model`` with
    ``vaelab.core.registry.FAMILIES``.
    """

    family = "model"
    image_shape: tuple[int, int, int]
    latent_dim: int
    classes: int = 0  # a family that can condition: the values it decodes under are 0 .. classes - 1
    takes_labels: bool = False  # the data's labels are an input (Context.labels): a conditional family (cvae)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # every family gets the same input coercion without writing it: its own methods are wrapped here
        for name in IMAGE_INPUTS:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "takes_any_images", False):
                setattr(cls, name, _taking_any_images(method))

    def __init__(self) -> None:
        super().__init__()
        self.network_dtype: torch.dtype | None = None  # set by the training's precision policy
        self.network_runners: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # see networks_replaced

    def can(self, capability: str) -> bool:
        """Whether this family implements ``capability`` (a method name of the protocol)."""
        method = getattr(type(self), capability, None)
        return method is not None and method is not getattr(LatentVariableModel, capability, None)

    def as_images(self, x) -> torch.Tensor:
        """``x`` as the float batch B x C x H x W in [0, 1] on the model's device that the networks take.

        Accepted: a tensor or array of floats in [0, 1] or of uint8 (0 to 255, as data sets hold them);
        a batch B x C x H x W or B x H x W x C, one image C x H x W (or H x W for one channel), B x H x W
        for one channel, or flat vectors B x C*H*W. Anything else: one sentence naming what is wanted.
        """
        c, h, w = self.image_shape
        wanted = (
            f"the {self.family} model takes images as floats in [0, 1] or uint8 (0-255), shaped B x {c} x {h} x {w} "
            f"(also B x {h} x {w} x {c}, one image {c} x {h} x {w}, or flat vectors B x {c * h * w})"
        )
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise VaelabError(f"{wanted}; got a {type(x).__name__}") from None
        got = f"; got {str(x.dtype).removeprefix('torch.')} of shape {tuple(x.shape)}"
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.dtype == torch.bool or x.is_floating_point():
            x = x.float()
        else:
            raise VaelabError(wanted + got)
        shape = tuple(x.shape)
        if shape[1:] == (c, h, w):
            pass
        elif len(shape) == 4 and shape[1:] == (h, w, c):  # channels last (Keras, numpy, PIL)
            x = x.permute(0, 3, 1, 2)
        elif shape == (c, h, w) or (c == 1 and shape == (h, w)) or shape == (c * h * w,):
            x = x.reshape(1, c, h, w)
        elif (c == 1 and len(shape) == 3 and shape[1:] == (h, w)) or (len(shape) == 2 and shape[1] == c * h * w):
            x = x.reshape(shape[0], c, h, w)
        else:
            raise VaelabError(wanted + got)
        if x.numel() and not (x.min() >= 0 and x.max() <= 1):  # also catches NaN
            raise VaelabError(f"{wanted}; got values from {x.min().item():g} to {x.max().item():g}")
        param = next(self.parameters(), None)
        return x if param is None else x.to(param.device)

    @torch.no_grad()
    def interpolate(self, x_a, x_b, steps: int = 10) -> torch.Tensor:
        """Decoded images (steps x C x H x W) along the straight line between the posterior means of two
        images, both ends included (any family that can encode and decode)."""
        if steps < 2:
            raise VaelabError(f"interpolate needs steps >= 2, got {steps}")
        a, b = self.as_images(x_a), self.as_images(x_b)
        if len(a) != 1 or len(b) != 1:
            raise VaelabError(f"interpolate takes one image at each end, got batches of {len(a)} and {len(b)}")
        z = self.encode(torch.cat([a, b]))
        t = torch.linspace(0.0, 1.0, steps, device=z.device)[:, None]
        return self.decode((1 - t) * z[0] + t * z[1])

    def _unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"the {self.family} model family has no {what}")

    def elbo(self, x: torch.Tensor, ctx: Context) -> ElboParts:
        raise self._unsupported("ELBO (objective.name = elbo)")

    def log_weights(
        self, x: torch.Tensor, k: int, ctx: Context, dreg_path: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> LogWeights:
        raise self._unsupported("importance weights (objective.name = iwae, eval --nll)")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise self._unsupported("encoder (latent scatter, probes)")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise self._unsupported("decoder from a latent code (manifold)")

    def q_z(self, x: torch.Tensor) -> Distribution:
        raise self._unsupported("posterior over its code from an image alone (latent scatter, vaelab serve)")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise self._unsupported("prior to sample from")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        raise self._unsupported("reconstruction")

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise self._unsupported("posterior mean and scale (features, vaelab encode)")

    def export_part(self, part: str) -> ExportPart:
        raise self._unsupported(f"exportable {part} (vaelab export)")

    def condition(self, labels: torch.Tensor | int) -> LatentVariableModel:
        raise self._unsupported("conditioning input (labels, vaelab sample --label): it is not a conditional family")

    def discrete_code(self, x: torch.Tensor) -> torch.Tensor:
        raise self._unsupported("discrete latent code")

    def code_densities(self, x: torch.Tensor, ctx: Context) -> CodeDensities:
        raise self._unsupported("per-dimension posterior densities (objective.name = btcvae)")

    def log_likelihood_bound(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        raise self._unsupported("deterministic bound on log p(x) (eval --nll)")

    def code_usage(self, x: torch.Tensor) -> torch.Tensor:
        raise self._unsupported("codebook (code usage)")

    def kl_part_bounds(self) -> dict[str, float]:
        raise self._unsupported("KL split into named parts (objective.capacity_parts)")

    def stages(self) -> tuple[Stage, ...]:
        """The stages training goes through, in order; the default trains the whole model in one."""
        return (Stage("model", None, "the whole model"),)

    def enter_stage(self, index: int) -> None:
        """Make the model ready for stage ``index`` of :meth:`stages` (freeze what it does not train)."""
        if index != 0:
            raise VaelabError(f"the {self.family} model family trains in one stage; there is no stage {index}")

    def parameter_groups(self) -> list[dict]:
        """The optimiser's parameter groups; a group's own settings (betas...) override the run's."""
        return [{"params": list(self.parameters())}]

    def networks(self) -> list[nn.Module]:
        """The neural networks, which may compute in reduced precision; distributions stay fp32."""
        return []

    def check_gradient(self, gradient: str) -> None:
        """Raise a one-line VaelabError if the IWAE bound's ``gradient`` estimator is wrong for this model
        (default: every estimator is right)."""

    @contextmanager
    def networks_replaced(
        self, runners: dict[nn.Module, Callable[[torch.Tensor], torch.Tensor]]
    ) -> Iterator[LatentVariableModel]:
        """Meanwhile compute each network in ``runners`` by its function instead (an exported, quantised
        copy, say), so every capability measures what that copy does."""
        saved, self.network_runners = self.network_runners, {id(net): run for net, run in runners.items()}
        try:
            yield self
        finally:
            self.network_runners = saved

    @contextmanager
    def networks_in(self, dtype: torch.dtype | None) -> Iterator[LatentVariableModel]:
        """Run :meth:`networks` under autocast to ``dtype`` (None: full precision) meanwhile."""
        saved, self.network_dtype = self.network_dtype, dtype
        try:
            yield self
        finally:
            self.network_dtype = saved

    def run_network(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``net(x)`` in the policy's dtype, handed on in fp32."""
        if self.network_runners and id(net) in self.network_runners:
            return self.network_runners[id(net)](x)
        if self.network_dtype is None:
            return net(x)
        with torch.autocast(x.device.type, dtype=self.network_dtype):
            out = net(x)
        return out.float()
