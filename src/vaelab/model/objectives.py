"""Training objectives. Each maps (model, x) to per-image terms in nats and a scalar loss.

* :class:`ELBO` -- E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), one reparameterised sample, the KL
  in closed form where one is registered (else the single-sample estimate log q(z) - log p(z)),
  optional KL warm-up and free bits. beta = 1, no warm-up, no free bits is the true ELBO.
* :class:`IWAE` -- log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q (Burda et al. 2016), with the
  plain reparameterised gradient or the doubly reparameterised one (DReG, Tucker et al. 2019) for
  the encoder: same bound, same expected gradient, less noise as k grows.

* :class:`CapacityELBO` -- reconstruction + gamma |KL - C|, the capacity C growing linearly from 0 to
  C_max over a number of optimiser steps (Burgess et al. 2018, "Understanding disentangling in beta-VAE");
  or, for a model whose KL comes in named parts, one such term per part (Dupont 2018, JointVAE).
* :class:`BetaTCVAE` -- the KL term split into index-code mutual information, total correlation and
  dimension-wise KL, each weighed on its own (Chen et al. 2018), estimated by minibatch weighted sampling.

Reported ``total`` is always the negative bound itself (beta = 1), whatever is optimised.

An objective may also refuse a model before any training (``check_model``: the trainer asks it once).

All are generic over the model protocol (``vaelab.model.base``): the ELBO and the capacity objective
ask the model for its parts, the IWAE for its importance log-weights, the beta-TCVAE for its codes'
densities. A family's own terms (``ElboParts.penalty``) are added to the ELBO-based losses. The noise,
and with it data-parallel training's noise protocol, the training step and the data set's size come
through the step's :class:`~vaelab.model.base.Context`.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass

import torch

from vaelab.config import TC_ESTIMATORS
from vaelab.core.registry import OBJECTIVES
from vaelab.errors import VaelabError
from vaelab.model.base import Context, ElboParts, Terms


def _no_examples(x: torch.Tensor) -> Terms:
    """The terms of an empty shard (a global batch smaller than the number of processes); its
    noise has been drawn, so its RNG stays in step with the other processes'."""
    empty = x.new_zeros(0)
    return Terms(x.new_zeros(()), empty, empty, empty)


def _penalty(parts: ElboParts) -> torch.Tensor | float:
    """The batch mean of the family's own terms (0 for a family without any)."""
    return 0.0 if parts.penalty is None else parts.penalty.mean()


def _whole_batch(ctx: Context, name: str, why: str) -> None:
    if ctx.shard is not None:
        raise VaelabError(f"objective.name = {name} {why}: data-parallel training is not supported")


class Objective:
    """Maps (model, x, ctx) to :class:`Terms`; refuses a model it cannot train in ``check_model``."""

    def __call__(self, model, x: torch.Tensor, ctx: Context | None = None) -> Terms:
        raise NotImplementedError

    def check_model(self, model) -> None:
        """Raise a one-line VaelabError if ``model`` cannot be trained on this objective (default: any can)."""

    def after_step(self, terms: Terms) -> None:
        """Keep what the next steps need from this training step's terms (default: nothing)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the objective keeps between steps, for a checkpoint (default: nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors; raise a one-line VaelabError, changing nothing, if they do not fit."""
        if state:
            raise VaelabError(
                f"the checkpoint holds objective state ({reprlib.repr(sorted(state))}) this objective has not"
            )


class ELBO(Objective):
    def __init__(self, beta: float = 1.0, free_bits: float = 0.0) -> None:
        self.beta = beta
        self.free_bits = free_bits

    def __call__(self, model, x: torch.Tensor, ctx: Context | None = None) -> Terms:
        ctx = ctx or Context()
        if ctx.shard is not None and self.free_bits > 0:
            # the free-bits budget is a mean over the whole batch, which a shard does not see
            raise ValueError("free bits are not supported with data-parallel training")
        if not len(x):
            model.elbo(x, ctx)  # draws this shard's share of the noise
            return _no_examples(x)
        parts = model.elbo(x, ctx)
        kl = parts.kl
        penalised_kl = kl
        if self.free_bits > 0:
            if parts.kl_per_dim is None:
                # a non-factorising KL: the budget applies to the whole KL, d * free_bits nats
                penalised_kl = kl.clamp(min=self.free_bits * model.latent_dim)
            else:
                # the budget is per dimension averaged over the batch (Kingma et al. 2016)
                per_dim_mean = parts.kl_per_dim.mean(0)
                penalised_kl = per_dim_mean.clamp(min=self.free_bits).sum().expand_as(kl)
        loss = (parts.reconstruction + self.beta * ctx.kl_weight * penalised_kl).mean() + _penalty(parts)
        return Terms(loss, parts.reconstruction + kl, parts.reconstruction, kl, parts.kl_per_dim, parts.extra)


def ramp(step: int, steps: int) -> float:
    """A linear schedule's progress after ``step`` of ``steps``: 0 to 1, then 1 (at once where steps = 0)."""
    return 1.0 if steps == 0 else min(1.0, step / steps)


@dataclass(frozen=True)
class PartCapacity:
    """One part's term of the per-part capacity loss: gamma |E_x[KL_part] - C|, C growing linearly from 0 to
    ``maximum`` nats over ``steps`` optimiser steps, and never above ``bound`` (the most the part can hold)."""

    gamma: float
    maximum: float
    steps: int

    def capacity(self, step: int, bound: float = math.inf) -> float:
        return min(self.maximum * ramp(step, self.steps), bound)


class CapacityELBO(Objective):
    """Burgess et al. (2018): E_x[reconstruction] + gamma |E_x[KL(q(z|x) || p(z))] - C|.

    The batch's mean KL is pulled towards a capacity C = capacity_max * min(1, step / capacity_steps)
    nats (their dSprites run: gamma 1000, C from 0 to 25 nats over 100,000 steps), so the code may
    carry C nats of information about x, no more, and gains them one factor at a time as C grows.
    The absolute value is of the batch mean, as in their code and disentanglement_lib's. A KL warm-up
    (``objective.kl_warmup_epochs``) scales the penalty as it scales the ELBO's KL.

    With ``parts`` (``objective.capacity_parts``), for a model whose KL is a sum of named parts
    (``kl_part_bounds``; gumbel: continuous z and categorical c), every part has its own term instead:

        E_x[reconstruction] + sum_p gamma_p |E_x[KL_p] - C_p|,  C_p = min(C_max,p * min(1, step / steps_p), bound_p),

    Dupont's (2018) JointVAE loss; bound_p is the most the part can hold (log K for a K-way categorical,
    which their code caps the discrete capacity at). Every part of the model must be given.
    """

    def __init__(
        self,
        gamma: float = 1.0,
        capacity_max: float = 25.0,
        capacity_steps: int = 100_000,
        parts: dict[str, PartCapacity] | None = None,
    ) -> None:
        self.gamma = gamma
        self.capacity_max = capacity_max
        self.capacity_steps = capacity_steps
        self.parts = dict(parts or {})

    def capacity(self, step: int) -> float:
        """C after ``step`` optimiser steps, nats."""
        return self.capacity_max * ramp(step, self.capacity_steps)

    def part_capacities(self, model, step: int) -> dict[str, float]:
        """Each part's C after ``step`` optimiser steps, capped at what the part can hold, nats."""
        bounds = model.kl_part_bounds()
        return {name: part.capacity(step, bounds[name]) for name, part in self.parts.items()}

    def check_model(self, model) -> None:
        if not self.parts:
            return
        if not model.can("kl_part_bounds"):
            raise VaelabError(
                f"objective.capacity_parts needs a model whose KL comes in named parts; the {model.family} model "
                "family's does not (leave objective.capacity_parts empty: one capacity on the whole KL)"
            )
        have = list(model.kl_part_bounds())
        unknown = [name for name in self.parts if name not in have]
        missing = [name for name in have if name not in self.parts]
        if unknown or missing:
            raise VaelabError(
                f"objective.capacity_parts must name each of the {model.family} model's KL parts once "
                f"({', '.join(have)})"
                + (f"; it has no {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )

    def __call__(self, model, x: torch.Tensor, ctx: Context | None = None) -> Terms:
        ctx = ctx or Context()
        _whole_batch(ctx, "capacity", "pulls the whole batch's mean KL towards C")
        parts = model.elbo(x, ctx)
        if self.parts:
            self.check_model(model)
            if parts.kl_parts is None:
                raise VaelabError(f"the {model.family} model named its KL parts but did not report them")
            capacities = self.part_capacities(model, ctx.step)
            distance = sum(
                self.parts[name].gamma * (parts.kl_parts[name].mean() - capacities[name]).abs() for name in self.parts
            )
            loss = parts.reconstruction.mean() + ctx.kl_weight * distance + _penalty(parts)
        else:
            distance = (parts.kl.mean() - self.capacity(ctx.step)).abs()
            loss = parts.reconstruction.mean() + self.gamma * ctx.kl_weight * distance + _penalty(parts)
        kl = parts.kl
        return Terms(loss, parts.reconstruction + kl, parts.reconstruction, kl, parts.kl_per_dim, parts.extra)


class BetaTCVAE(Objective):
    """Chen et al. (2018): the ELBO's KL term, averaged over the data, is

        E_x KL(q(z|x) || p(z)) = I_q(x; z) + TC(z) + sum_k KL(q(z_k) || p(z_k)),

    index-code mutual information, total correlation of the aggregate posterior q(z) = E_x q(z|x),
    and dimension-wise KL; the loss weighs them alpha, beta, gamma (1, beta, 1 in their experiments).
    Per example, at z_i ~ q(z | x_i):

        MI_i = log q(z_i | x_i) - log q(z_i),  TC_i = log q(z_i) - sum_k log q(z_ik),
        dimKL_i = sum_k log q(z_ik) - log p(z_i),

    with log q(z_i) and log q(z_ik) estimated from the batch of M codes drawn from a data set of N
    examples, by minibatch weighted sampling (``estimator = "mws"``: their eq. and their code's ``mss=False``
    branch)

        log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M),   likewise per dimension,

    or by minibatch stratified sampling (``"mss"``, the idea of their appendix): z_i was drawn from x_i's
    posterior and the other M - 1 examples stand for the other N - 1, so

        log q(z_i) ~ log [ q(z_i | x_i) / N + (N - 1) / (N (M - 1)) sum_(j != i) q(z_i | x_j) ],

    likewise per dimension. (Their code's ``_log_importance_weight_matrix``, copied by other libraries, puts
    the 1/N in the first column rather than on the diagonal: rtqichen/beta-tcvae PR #1.)

    With alpha = beta = gamma = 1 the three sum to log q(z_i | x_i) - log p(z_i): the plain ELBO's
    one-sample KL. N is the training set's size, from the step's Context. A KL warm-up scales all three;
    besides it, ``anneal_steps`` > 0 is the optional warm-up of Chen et al.'s code (``anneal_kl`` with
    ``--beta-anneal --lambda-anneal``, 7,000 steps for dSprites): the TC weight rises from 0 and the
    dimension-wise KL's from 0.05 of gamma, linearly in the step, to beta and gamma at ``anneal_steps``
    (:meth:`weights`); the mutual information's stays alpha.

    ``memory`` > 0 adds the posteriors of that many recent training examples (their detached means and
    scales, a ring refilled after each step by :meth:`after_step`) to the batch's M as further samples of the
    data, in the joint and in every marginal alike: M + Q posteriors, N (M + Q) in place of N M (mws), or
    1/N for a code's own and (N - 1) / (N (M + Q - 1)) for each other (mss). With narrow posteriors a batch
    says little about the joint q(z), each code's own posterior dominating its sum. The joint and the
    marginals must see the same posteriors with the same weights: with more in the joint than in the
    marginals, shrinking a scale raises the marginals' own terms and not the joint's, which the TC weight
    rewards, and the posteriors collapse (measured: docs/disentanglement.md).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        estimator: str = "mws",
        anneal_steps: int = 0,
        memory: int = 0,
    ) -> None:
        if estimator not in TC_ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(TC_ESTIMATORS)}, not {estimator!r}")
        self.alpha, self.beta, self.gamma, self.estimator = alpha, beta, gamma, estimator
        self.anneal_steps = anneal_steps
        self.memory = memory
        # loc and scale (Q x d) of the remembered posteriors, and each slot's log weight: 0 filled, -inf empty
        self.remembered: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._next_slot = 0

    def after_step(self, terms: Terms) -> None:
        """Remember the step's posteriors in the ring, the oldest first out."""
        if not self.memory or terms.posterior is None or not len(terms.posterior[0]):
            return
        loc, scale = (t.detach().float() for t in terms.posterior)
        if self.remembered is None:
            q, d = self.memory, loc.shape[-1]
            self.remembered = (loc.new_zeros(q, d), loc.new_ones(q, d), loc.new_full((q,), -math.inf))
        slots = (self._next_slot + torch.arange(min(len(loc), self.memory))) % self.memory
        for kept, new in zip(self.remembered, (loc[-len(slots) :], scale[-len(slots) :], loc.new_zeros(len(slots)))):
            kept[slots] = new
        self._next_slot = (self._next_slot + len(slots)) % self.memory

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.remembered is None:
            return {}
        loc, scale, filled = self.remembered
        return {"loc": loc, "scale": scale, "filled": filled == 0, "next_slot": torch.tensor(self._next_slot)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self.remembered, self._next_slot = None, 0
            return
        shapes = {name: tuple(t.shape) for name, t in state.items()}
        q = self.memory
        fits = (
            set(state) == {"loc", "scale", "filled", "next_slot"}
            and len(shapes["loc"]) == 2
            and shapes["loc"][0] == q
            and shapes["scale"] == shapes["loc"]
            and shapes["filled"] == (q,)
            and state["filled"].dtype == torch.bool
            and shapes["next_slot"] == ()
            and 0 <= int(state["next_slot"]) < max(q, 1)
            and bool((state["scale"] > 0).all())
        )
        if not fits:
            raise VaelabError(
                f"the checkpoint's remembered posteriors ({reprlib.repr(shapes)}) do not fit objective.tc_memory = {q}"
            )
        filled = torch.where(state["filled"], 0.0, -math.inf)
        self.remembered = (state["loc"].float().clone(), state["scale"].float().clone(), filled)
        self._next_slot = int(state["next_slot"])

    def weights(self, iteration: int) -> tuple[float, float]:
        """(TC weight, dimension-wise KL weight) at the ``iteration``-th optimiser step, counted from 1 as theirs."""
        if not self.anneal_steps:
            return self.beta, self.gamma
        done = ramp(iteration, self.anneal_steps)
        return self.beta * done, self.gamma * min(1.0, 0.05 + done)

    @staticmethod
    def log_weights(
        batch: int, count: int | torch.Tensor, dataset_size: int, estimator: str, like: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log W, B x B: the weight of q(z_i | x_j) among the batch's posteriors; the log weight of each posterior
        beyond the batch) in the estimate of q(z_i) from ``count`` posteriors of a data set of N: every one
        1/(N count) (mws); the code's own 1/N and each other (N - 1) / (N (count - 1)), summing to 1 (mss; a
        code alone has only its own, weight 1)."""
        n, count = dataset_size, torch.as_tensor(count, dtype=torch.float64)
        if estimator == "mws":
            own = other = -math.log(n) - count.log()
        elif estimator == "mss":
            alone = count <= 1
            log_others = math.log(n - 1) - math.log(n) if n > 1 else -math.inf  # N = 1: no others
            own = torch.where(alone, 0.0, -math.log(n))
            other = torch.where(alone, -math.inf, log_others - (count - 1).clamp_min(1).log())
        else:
            raise ValueError(f"estimator must be one of {', '.join(TC_ESTIMATORS)}, not {estimator!r}")
        dtype, device = (like.dtype, like.device) if like is not None else (torch.get_default_dtype(), None)
        is_own = torch.eye(batch, dtype=torch.bool, device=device)
        return torch.where(is_own, own, other).to(dtype), other

    @staticmethod
    def stratified_log_weights(batch: int, dataset_size: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """log W (B x B) of mss: the weight of q(z_i | x_j) in the estimate of q(z_i), 1/N on the diagonal and
        (N - 1) / (N (B - 1)) off it, each row summing to 1; a batch of one has only its own code (weight 1)."""
        return BetaTCVAE.log_weights(batch, batch, dataset_size, "mss", like)[0]

    @staticmethod
    def remembered_log_sums(
        z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, filled: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log sum_j q(z_i | x_j) (B) and, per dimension, log sum_j q(z_ik | x_j) (B x d) over the remembered
        posteriors j (``loc``, ``scale``: Q x d; ``filled``: Q log weights, 0 or -inf for an empty slot)."""
        standardised = (z.unsqueeze(1) - loc) / scale  # B x Q x d
        log_q = -0.5 * standardised.pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)
        joint = torch.logsumexp(log_q.sum(-1) + filled, 1)
        return joint, torch.logsumexp(log_q + filled.unsqueeze(-1), 1)

    @staticmethod
    def decomposition(
        log_q_pairs: torch.Tensor,
        log_p: torch.Tensor,
        dataset_size: int,
        estimator: str = "mws",
        remembered: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(MI_i, TC_i, dimKL_i) per example from log q(z_ik | x_j) (B x B x d) and log p(z_ik) (B x d);
        ``remembered``: the sums over remembered posteriors (:meth:`remembered_log_sums`) and how many there
        are, further terms of every estimate."""
        batch = len(log_q_pairs)
        log_q_given_x = log_q_pairs.diagonal(dim1=0, dim2=1).sum(0)  # [i, i, :] summed: log q(z_i | x_i)
        count = batch if remembered is None else batch + remembered[2]
        log_w, other = BetaTCVAE.log_weights(batch, count, dataset_size, estimator, log_q_pairs)
        log_q = torch.logsumexp(log_w + log_q_pairs.sum(-1), 1)  # log q(z_i)
        log_q_marginals = torch.logsumexp(log_w.unsqueeze(-1) + log_q_pairs, 1)  # log q(z_ik)
        if remembered is not None:
            log_q = torch.logaddexp(log_q, other + remembered[0])
            log_q_marginals = torch.logaddexp(log_q_marginals, other + remembered[1])
        log_q_marginals = log_q_marginals.sum(-1)
        return log_q_given_x - log_q, log_q - log_q_marginals, log_q_marginals - log_p.sum(-1)

    def __call__(self, model, x: torch.Tensor, ctx: Context | None = None) -> Terms:
        ctx = ctx or Context()
        _whole_batch(ctx, "btcvae", "estimates q(z) from the whole batch's codes")
        if ctx.dataset_size < 1:
            raise VaelabError("objective.name = btcvae needs the training set's size N (Context.dataset_size)")
        if self.memory + len(x) > ctx.dataset_size:
            raise VaelabError(
                f"objective.tc_memory = {self.memory} and a batch of {len(x)} exceed the {ctx.dataset_size} training "
                "examples: the memory would hold the batch's own examples as others; lower objective.tc_memory"
            )
        densities = model.code_densities(x, ctx)
        parts = densities.parts
        remembered = None
        if self.remembered is not None:
            loc, scale, filled = self.remembered
            remembered = (*self.remembered_log_sums(densities.z, loc, scale, filled), filled.exp().sum())
        mi, tc, dim_kl = self.decomposition(
            densities.log_q_pairs, densities.log_p, ctx.dataset_size, self.estimator, remembered
        )
        beta, gamma = self.weights(ctx.step + 1)  # ctx.step: the steps before this one
        penalised = self.alpha * mi + beta * tc + gamma * dim_kl
        loss = (parts.reconstruction + ctx.kl_weight * penalised).mean() + _penalty(parts)
        extra = {**parts.extra, "mutual_information": mi, "total_correlation": tc, "dimension_kl": dim_kl}
        kl = parts.kl
        posterior = densities.posterior if self.memory else None
        return Terms(loss, parts.reconstruction + kl, parts.reconstruction, kl, parts.kl_per_dim, extra, posterior)


class _ImportanceWeightedPath(torch.autograd.Function):
    """Identity on z (k x B x d) whose backward multiplies each sample's gradient by its normalised
    importance weight w~_i.

    The weights are only known once the decoder has run, after z was used, so they reach the
    backward through a second output, ``tap`` (zeros, k x B): the loss adds ``(tap * w~).sum()``,
    which is 0 in value and hands back w~ times the loss's outer scale as tap's gradient; the
    backward normalises that scale away. A pure function of its inputs, so it compiles.
    """

    @staticmethod
    def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z.clone(), z.new_zeros(z.shape[:-1])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor, grad_tap: torch.Tensor) -> torch.Tensor:
        weights = grad_tap / grad_tap.sum(0, keepdim=True)
        return grad_z * weights.unsqueeze(-1)


class IWAE(Objective):
    """The importance-weighted bound. ``gradient`` picks the encoder's gradient estimator:

    * ``"reparam"``: the plain gradient of the bound, sum_i w~_i d/dphi log w_i (Burda et al.);
      its signal-to-noise ratio for the encoder falls like 1/sqrt(k) (Rainforth et al. 2018).
    * ``"dreg"``: sum_i w~_i^2 (d log w_i / d z_i)(d z_i / d phi), with q's parameters held fixed
      inside log w_i (Tucker et al. 2019, eq. 6). Unbiased for the same gradient, without the
      score-function term that makes the plain one noisy. The decoder's and prior's gradients are
      the plain ones either way.
    """

    def __init__(self, k: int, gradient: str = "reparam") -> None:
        if gradient not in ("reparam", "dreg"):
            raise ValueError(f"unknown IWAE gradient estimator {gradient!r}; known: reparam, dreg")
        self.k = k
        self.gradient = gradient

    def check_model(self, model) -> None:
        model.check_gradient(self.gradient)

    def __call__(self, model, x: torch.Tensor, ctx: Context | None = None) -> Terms:
        ctx = ctx or Context()
        tap: list[torch.Tensor] = []

        def dreg_path(z: torch.Tensor) -> torch.Tensor:
            z_path, weights_tap = _ImportanceWeightedPath.apply(z)
            tap.append(weights_tap)
            return z_path

        if not len(x):
            model.log_weights(x, self.k, ctx)  # draws this shard's share of the noise
            return _no_examples(x)
        weights = model.log_weights(x, self.k, ctx, dreg_path if self.gradient == "dreg" else None)
        bound = torch.logsumexp(weights.log_w, 0) - math.log(self.k)
        loss = -bound.mean()
        if tap:
            loss = loss + (tap[0] * torch.softmax(weights.log_w.detach(), 0)).sum()
        parts = weights.parts  # the report's split: the first sample's reconstruction, the KL
        return Terms(loss, -bound, parts.reconstruction, parts.kl, parts.kl_per_dim, parts.extra)


@OBJECTIVES.register("elbo", "the ELBO, one sample (beta, KL warm-up and free bits optional)")
def _elbo(config) -> ELBO:
    return ELBO(beta=config.beta, free_bits=config.free_bits)


@OBJECTIVES.register("iwae", "the k-sample importance-weighted bound (gradient: reparam or dreg)")
def _iwae(config) -> IWAE:
    return IWAE(config.k, config.gradient)


@OBJECTIVES.register(
    "capacity",
    "Burgess et al.'s capacity-annealed beta-VAE: gamma |KL - C|, C from 0 to capacity_max nats; per KL part "
    "(capacity_parts, JointVAE) for a model that splits its KL",
)
def _capacity(config) -> CapacityELBO:
    n = len(config.capacity_parts)
    gamma = config.capacity_part_gamma or [config.gamma] * n
    maximum = config.capacity_part_max or [config.capacity_max] * n
    steps = config.capacity_part_steps or [config.capacity_steps] * n
    parts = {
        name: PartCapacity(g, c, s) for name, g, c, s in zip(config.capacity_parts, gamma, maximum, steps, strict=True)
    }
    return CapacityELBO(config.gamma, config.capacity_max, config.capacity_steps, parts)


@OBJECTIVES.register(
    "btcvae",
    "beta-TCVAE (Chen et al.): alpha MI + beta TC + gamma dimension-wise KL; q(z) by minibatch weighted or "
    "stratified sampling (tc_estimator)",
)
def _btcvae(config) -> BetaTCVAE:
    return BetaTCVAE(
        config.alpha, config.beta, config.gamma, config.tc_estimator, config.tc_anneal_steps, config.tc_memory
    )


def build_objective(config):
    """The objective an :class:`~vaelab.config.ObjectiveConfig` names, built by its registered factory."""
    return OBJECTIVES.get(config.name)(config)


def make_objective(name: str, beta: float = 1.0, k: int = 1, free_bits: float = 0.0, gradient: str = "reparam", **keys):
    """The objective registered as ``name``; an unknown name is an error, never a fallback. ``keys``: other
    ``objective.*`` settings (gamma, capacity_max...)."""
    from vaelab.config import ObjectiveConfig

    return build_objective(ObjectiveConfig(name=name, beta=beta, k=k, free_bits=free_bits, gradient=gradient, **keys))
