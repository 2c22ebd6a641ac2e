"""A VAE with L >= 2 stochastic layers z_1 (next to x) .. z_L (the top), diagonal Gaussians throughout.

Generative model, top-down:  p(z_L) = N(0, I),  p(z_i | z_{i+1}) = N(mu_i, sigma_i^2) by an MLP,
p(x | z_1) by the decoder network and the likelihood family.

Inference, two ways (``model.inference``):

* ``bottom-up`` (Burda et al. 2016): q(z_1 | x) q(z_2 | z_1) .. q(z_L | z_{L-1}), each layer a
  Gaussian whose parameters an MLP computes from the sample below it.
* ``ladder`` (Sønderby et al. 2016): a deterministic pass up gives each layer a Gaussian term
  N(mu^_i, sigma^_i^2) (layer i's MLP reads the mean mu^_{i-1} of the layer below); then, top-down,
  q(z_L | x) = N(mu^_L, sigma^_L^2) and q(z_i | x, z_{i+1}) merges N(mu^_i, sigma^_i^2) with the
  generative p(z_i | z_{i+1}) by precision weighting:
  sigma_q^-2 = sigma^^-2 + sigma_p^-2,  mu_q = (mu^ sigma^^-2 + mu_p sigma_p^-2) sigma_q^2.
  The generative and the inference model share the top-down MLPs, as in the paper.

The ELBO's KL is a sum over layers. A layer whose q and p are conditioned on the same sample
(every ladder layer; the bottom-up model's top layer) has its KL in closed form given that sample;
the other bottom-up layers take the one-sample estimate log q(z_i) - log p(z_i). Both are unbiased
estimates of the same KL(q(z_1..L | x) || p(z_1..L)). The importance log-weights are
log p(x | z_1) + sum_i [log p(z_i | z_{i+1}) - log q(z_i | .)], so the IWAE bound and the NLL
estimate are those of the whole hierarchy.

The doubly reparameterised gradient (DReG, Tucker et al. 2019; ``objective.gradient = dreg``) needs
log w_i = log p(x, z_i) - log q_psi(z_i | x) with the codes on their reparameterised path and q's
parameters psi stopped. Here psi are the *weights* of every network that makes q, not the Gaussians'
(mu, sigma): q(z_{i+1} | z_i) is a function of the code below, and that dependence stays
differentiable (detaching mu(z_i) instead would drop d log q(z_{i+1} | z_i) / d z_i from d log w / d z
and bias the estimator). So all layers are sampled first, their codes pass through ``dreg_path`` once
(together), and q is rebuilt at those codes by networks whose weights are held fixed.

The ladder's q also contains the top-down generative MLPs (theta, shared with p). DReG's identity
E[sum w~_i d log q_psi(z_i) / d psi] = E[sum (w~_i - w~_i^2) d log w_i / d z_i  d z_i / d psi] holds for
any reparameterised q and every parameter of it, so it is applied to those weights too: they are
stopped inside log q like the encoder's, and get w~ times their direct gradient through log p plus
w~^2 times their path gradient through the merged samples (Tucker et al., eq. 6, with p and q
sharing parameters). The tests check both schemes against that formula written out.

The latent code the figures and probes see (``encode``, ``decode``, ``q_z``, ``latent_dim``) is the
top layer's, the layers below at their means; ``layer_means`` gives every layer's, ``features`` every
layer's mean and scale. ``export_part`` exports the same two maps (see its docstring).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Distribution, kl_divergence
from torch.func import functional_call

from vaelab.distributions.posteriors.diagonal import DiagonalNormal
from vaelab.errors import VaelabError
from vaelab.model.base import EXPORT_PARTS, Context, ElboParts, ExportPart, LatentVariableModel, LogWeights
from vaelab.nets.accel import plain_copy

INFERENCE = ("bottom-up", "ladder")


def gaussian(params: torch.Tensor) -> DiagonalNormal:
    """N(mu, diag sigma^2) from a network's output [mu, log sigma^2]."""
    mu, log_var = params.chunk(2, dim=-1)
    return DiagonalNormal(mu, torch.exp(0.5 * log_var))


def precision_weighted(up: DiagonalNormal, down: DiagonalNormal) -> DiagonalNormal:
    """The ladder's merge of a bottom-up term and the top-down prior: the product of two Gaussians."""
    precision_up, precision_down = up.scale.pow(-2), down.scale.pow(-2)
    variance = 1 / (precision_up + precision_down)
    return DiagonalNormal((up.loc * precision_up + down.loc * precision_down) * variance, variance.sqrt())


class HierarchicalVAE(LatentVariableModel):
    family = "hierarchical"

    def __init__(
        self,
        encoder: nn.Module,
        up: nn.ModuleList,
        down: nn.ModuleList,
        decoder: nn.Module,
        likelihood: nn.Module,
        prior: nn.Module,
        sizes: list[int],
        image_shape: tuple[int, int, int],
        inference: str = "bottom-up",
    ) -> None:
        super().__init__()
        self.encoder = encoder  # x -> [mu, log var] of layer 1 (bottom-up: q(z_1|x); ladder: its up term)
        self.up = up  # up[i]: layer i+1's code -> [mu, log var] of layer i+2
        self.down = down  # down[i]: z_{i+2} -> [mu, log var] of p(z_{i+1} | z_{i+2})
        self.decoder = decoder  # z_1 -> the likelihood's parameters
        self.likelihood = likelihood
        self.prior = prior  # p(z_L)
        self.sizes = tuple(sizes)
        self.latent_dim = self.sizes[-1]
        self.image_shape = tuple(image_shape)
        self.inference = inference

    def networks(self) -> list[nn.Module]:
        return [self.encoder, *self.up, *self.down, self.decoder]

    def check_gradient(self, gradient: str) -> None:
        # batch statistics make q(z_i+1 | z_i) of one sample depend on the others' codes: DReG's identity is per sample
        if gradient == "dreg" and any(isinstance(m, nn.BatchNorm1d) for m in self.modules()):
            raise VaelabError(
                "objective.gradient = dreg is not supported with model.batch_norm in the hierarchical family "
                "(in training, batch statistics tie each sample's q to the other samples' codes); use gradient = reparam"
            )

    # -- the distributions --------------------------------------------------------------------------

    def p_top(self) -> Distribution:
        return self.prior()

    def p_below(self, i: int, z_above: torch.Tensor) -> DiagonalNormal:
        """p(z_{i+1} | z_{i+2}) (0-based layer ``i``), z_above with any leading dimensions."""
        out = self.run_network(self.down[i], z_above.reshape(-1, z_above.shape[-1]))  # B x d, as exported
        return gaussian(out.reshape(*z_above.shape[:-1], out.shape[-1]))

    def p_x(self, z1: torch.Tensor) -> Distribution:
        """p(x | z_1); ``z1`` may carry leading sample dimensions (S x B x d), which are kept."""
        lead = z1.shape[:-1]
        out = self.run_network(self.decoder, z1.reshape(-1, z1.shape[-1]))
        return self.likelihood(out.reshape(*lead, *out.shape[1:]))

    def run_stopped(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``net(x)`` with the net's weights held fixed: the gradient reaches ``x``, not the weights."""
        fixed = {name: weight.detach() for name, weight in net.named_parameters()}
        return self.run_network(lambda v: functional_call(net, fixed, (v,)), x)

    def priors(self, zs: list[torch.Tensor]) -> list[Distribution]:
        """p(z_i | z_{i+1}) per layer, bottom to top, at the codes ``zs``; p(z_L) last."""
        return [self.p_below(i, zs[i + 1]) for i in range(len(self.down))] + [self.p_top()]

    def _chain(self, x: torch.Tensor, eps: torch.Tensor | None, dreg_path: Callable | None = None):
        """Per layer (bottom to top) the posterior q_i, the prior p_i and the code z_i.

        ``eps`` (... x B x sum(sizes)) gives reparameterised samples; None follows the means (figures).
        With ``dreg_path`` the sampled codes pass through it, and q is rebuilt at them with its
        networks' weights held fixed (see the module's docstring).
        """
        noise = [None] * len(self.sizes) if eps is None else list(eps.split(self.sizes, dim=-1))

        def draw(q: DiagonalNormal, e: torch.Tensor | None) -> torch.Tensor:
            return q.loc if e is None else q.loc + e * q.scale

        def on_path(zs: list[torch.Tensor]) -> list[torch.Tensor]:
            return list(dreg_path(torch.cat(zs, dim=-1)).split(self.sizes, dim=-1))

        first = gaussian(self.run_network(self.encoder, x))
        if self.inference == "bottom-up":
            qs, zs = [first], [draw(first, noise[0])]
            for i, net in enumerate(self.up):
                qs.append(gaussian(self.run_network(net, zs[-1])))
                zs.append(draw(qs[-1], noise[i + 1]))
            if dreg_path is not None:
                zs = on_path(zs)
                qs = [first.detached()] + [gaussian(self.run_stopped(net, z)) for net, z in zip(self.up, zs)]
            return qs, self.priors(zs), zs
        ups = [first]
        for net in self.up:
            ups.append(gaussian(self.run_network(net, ups[-1].loc)))
        qs, ps, zs = [ups[-1]], [self.p_top()], [draw(ups[-1], noise[-1])]
        for i in reversed(range(len(self.down))):
            p = self.p_below(i, zs[0])
            q = precision_weighted(ups[i], p)
            qs.insert(0, q)
            ps.insert(0, p)
            zs.insert(0, draw(q, noise[i]))
        if dreg_path is not None:  # the ups depend on x alone; the top-down nets are stopped inside q only
            zs = on_path(zs)
            ps = self.priors(zs)
            stopped = [gaussian(self.run_stopped(net, z)) for net, z in zip(self.down, zs[1:])]
            qs = [precision_weighted(up.detached(), p) for up, p in zip(ups, stopped)] + [ups[-1].detached()]
        return qs, ps, zs

    def _closed_form(self, i: int) -> bool:
        """Whether layer i's q and p condition on the same sample, so its KL has a closed form."""
        return self.inference == "ladder" or i == len(self.sizes) - 1

    def _layer_kls(self, qs, ps, zs) -> list[torch.Tensor]:
        """Per layer, the KL per dimension (B x d_i): closed form where it has one, else log q - log p."""
        kls = []
        for i, (q, p, z) in enumerate(zip(qs, ps, zs)):
            if self._closed_form(i):
                q_base, p_base = q.base_dist, p.base_dist
                kls.append(kl_divergence(q_base, p_base).expand(z.shape))
            else:
                kls.append(q.base_dist.log_prob(z) - p.base_dist.log_prob(z))
        return kls

    # -- the protocol -------------------------------------------------------------------------------

    def elbo(self, x: torch.Tensor, ctx: Context) -> ElboParts:
        eps = ctx.noise((len(x), sum(self.sizes)), x)
        if not len(x):  # an empty shard: its share of the noise is drawn, nothing to decode
            return ElboParts(x.new_zeros(0), x.new_zeros(0))
        qs, ps, zs = self._chain(x, eps)
        reconstruction = -self.p_x(zs[0]).log_prob(x)
        kls = self._layer_kls(qs, ps, zs)
        per_layer = {f"kl_layer{i + 1}": kl.sum(-1) for i, kl in enumerate(kls)}
        return ElboParts(reconstruction, sum(per_layer.values()), torch.cat(kls, dim=-1), per_layer)

    def log_weights(
        self, x: torch.Tensor, k: int, ctx: Context, dreg_path: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> LogWeights:
        eps = ctx.noise((k, len(x), sum(self.sizes)), x)
        if not len(x):
            return LogWeights(x.new_zeros(k, 0), ElboParts(x.new_zeros(0), x.new_zeros(0)))
        qs, ps, zs = self._chain(x, eps, dreg_path)
        log_px_z = self.p_x(zs[0]).log_prob(x)
        log_ratios = [p.log_prob(z) - q.log_prob(z) for q, p, z in zip(qs, ps, zs)]
        log_w = log_px_z + sum(log_ratios)
        first = [kl[0].detach() for kl in self._layer_kls(qs, ps, zs)]
        per_layer = {f"kl_layer{i + 1}": kl.sum(-1) for i, kl in enumerate(first)}
        parts = ElboParts(-log_px_z[0].detach(), sum(per_layer.values()), torch.cat(first, dim=-1), per_layer)
        return LogWeights(log_w, parts)

    @torch.no_grad()
    def layer_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """E_q[z_i | x] per layer, bottom to top, each layer's mean computed from the means around it."""
        return self._chain(x, None)[2]

    def q_z(self, x: torch.Tensor) -> DiagonalNormal:
        """The top layer's posterior, every layer below at its mean: q(z_L | x) itself under ladder
        inference; bottom-up, q(z_L | z_(L-1)) at z_(L-1)'s mean (q(z_L | x) is a mixture, not a Gaussian)."""
        return self._chain(x, None)[0][-1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The top layer's posterior mean (what the latent scatter and the manifold show)."""
        return self.layer_means(x)[-1]

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's posterior mean and standard deviation, concatenated bottom to top (the top
        layer's, ``q_z``'s, last)."""
        qs = self._chain(x, None)[0]
        return torch.cat([q.loc for q in qs], -1), torch.cat([q.scale for q in qs], -1)

    @torch.no_grad()
    def decode_from(self, z: torch.Tensor, layer: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images from codes of ``layer`` (1 = next to x), the layers below it at their
        conditional means, or drawn from p(z_i | z_{i+1}) with ``generator``."""
        for i in reversed(range(layer - 1)):
            p = self.p_below(i, z)
            noise = None if generator is None else torch.randn(p.loc.shape, generator=generator).to(p.loc.device)
            z = p.loc if noise is None else p.loc + p.scale * noise
        return self.p_x(z).mean.clamp(0, 1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_from(z, len(self.sizes))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images p(x | z_1) of ``n`` ancestral samples z_L -> .. -> z_1."""
        generator = generator or torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        return self.decode_from(torch.randn(n, self.latent_dim, generator=generator), len(self.sizes), generator)

    @torch.no_grad()
    def reconstruct_through(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """x encoded up to ``layer`` (its posterior mean) and decoded back down through the means."""
        return self.decode_from(self.layer_means(x)[layer - 1], layer)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct_through(x, 1)

    def export_part(self, part: str) -> ExportPart:
        """The two maps of the top-layer code, as plain torch modules (the same under both inferences):

        * ``encoder``: images ``x`` -> ``mean``, ``scale`` of the top layer's posterior with every layer
          below at its mean (what ``q_z`` gives: ``encode``'s mean, the last ``latent_dim`` columns of
          ``features``), and ``encoder_output``, the bottom network's [mu, log sigma^2] of layer 1;
        * ``decoder``: top codes ``z`` -> ``mean`` images through the layers' conditional means (what
          ``decode`` gives), and ``top_down_output``, the top MLP's [mu, log sigma^2] of
          p(z_(L-1) | z_L): the only network that takes ``z``, so a quality check that swaps networks
          for the file (``networks_replaced``) measures that MLP of the decoder file, not the rest.
        """
        if part == "encoder":
            module = _TopEncoder(plain_copy(self.encoder), copy.deepcopy(self.up))
            example = torch.rand(2, *self.image_shape)
            return ExportPart(module.eval(), self.encoder, "x", ("mean", "scale", "encoder_output"), example)
        if part == "decoder":
            module = _TopDecoder(copy.deepcopy(self.down), plain_copy(self.decoder), copy.deepcopy(self.likelihood))
            example = torch.randn(2, self.latent_dim)
            return ExportPart(module.eval(), self.down[-1], "z", ("mean", "top_down_output"), example)
        raise VaelabError(f"unknown part {part!r}; choose one of {', '.join(EXPORT_PARTS)}")

    @torch.no_grad()
    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start p(x | z_1) at the mean image (as the VAE family does; see SlotModel.init_output_bias)."""
        self.decoder.set_output_bias(mean_image, self.likelihood.output_for_mean)


class _TopEncoder(nn.Module):
    """x -> the top layer's posterior mean and scale through the layers' means, and layer 1's parameters."""

    def __init__(self, encoder: nn.Module, up: nn.ModuleList) -> None:
        super().__init__()
        self.encoder, self.up = encoder, up

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.encoder(x)
        q = gaussian(out)
        for net in self.up:  # bottom-up: q(z_i+1 | z_i) at z_i's mean; ladder: the up pass, which gives q(z_L | x)
            q = gaussian(net(q.loc))
        return q.loc, q.scale, out


class _TopDecoder(nn.Module):
    """z_L -> the mean image through the layers' conditional means, and the top MLP's output."""

    def __init__(self, down: nn.ModuleList, decoder: nn.Module, likelihood: nn.Module) -> None:
        super().__init__()
        self.down, self.decoder, self.likelihood = down, decoder, likelihood

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = self.down[-1](z)
        z = gaussian(top).loc
        for i in reversed(range(len(self.down) - 1)):
            z = gaussian(self.down[i](z)).loc
        return self.likelihood(self.decoder(z)).mean.clamp(0, 1), top
