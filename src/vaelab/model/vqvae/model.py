"""The VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural discrete representation learning"), with a
learned autoregressive prior over its codes.

The encoder maps x to a grid z_e(x) of P = H/4 * W/4 vectors of D numbers; each is replaced by its nearest
of K codebook vectors e_k (c_i = argmin_k ||z_e,i - e_k||), and the decoder maps the grid of chosen vectors
to p(x | c) by the likelihood family. The posterior q(c | x) is one-hot (deterministic), so with a prior p(c)

    log p(x) >= E_q[log p(x | c)] - KL(q || p) = log p(x | c(x)) + log p(c(x)),

since KL(one-hot || p) = -log p(c(x)). That is the bound this family reports: ``reconstruction`` =
-log p(x | c(x)), ``kl`` = -log p(c(x)), both in nats per image; ``eval --nll`` reports it as such (any
number of importance samples from a one-hot q gives the same value).

Training runs in two stages (``stages()``), as in the paper:

1. ``autoencoder``: p(c) is uniform (``kl`` = P log K, a constant); the loss is the reconstruction plus
   the commitment term beta ||z_e(x) - sg(e)||^2 (``ElboParts.penalty``), the gradient passing the
   quantisation straight through (z_q = z_e + sg(e - z_e)). The codebook is not trained by the gradient
   but by exponential moving averages of its assignments (the paper's appendix; Sonnet's
   VectorQuantizerEMA): N_k <- gamma N_k + (1 - gamma) n_k, m_k <- gamma m_k + (1 - gamma) sum_{i: c_i = k} z_e,i,
   e_k = m_k / N~_k with N~_k Laplace-smoothed. A code whose moving count N_k falls below DEAD_USAGE
   assignments per batch (about 1 / (1 - gamma) steps of window) is restarted at a random encoder output
   of the batch (Dhariwal et al. 2020, Jukebox).
2. ``prior``: the encoder, decoder and codebook are frozen and a causal transformer learns
   p(c) = prod_i p(c_i | c_<i) over the frozen codes (``model.prior_epochs``); ``kl`` is now its
   cross-entropy -log p(c(x)). With ``prior_epochs = 0`` the model keeps the uniform prior.

The stage the model is in is a buffer, so a saved model samples from the prior it was trained with.
Extra terms per example: ``commitment`` (||z_e - sg(e)||^2, unweighted), and the batch's codebook
``perplexity`` exp(H(usage)) and ``codes_used`` (the fraction of the K codes chosen at least once).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from vaelab.errors import VaelabError
from vaelab.model.base import Context, ElboParts, LatentVariableModel, Stage
from vaelab.model.codebook import perplexity
from vaelab.model.vqvae.nets import CodePrior

LAPLACE = 1e-5  # the smoothing of the EMA counts (Sonnet's epsilon)
DEAD_USAGE = 1.0  # a code chosen fewer times per batch than this, on the moving average, is restarted
STAGES = (
    Stage("autoencoder", None, "encoder, decoder and the EMA codebook, under a uniform prior over the codes"),
    Stage("prior", None, "the autoregressive prior over the frozen codes (model.prior_epochs)"),
)


class VectorQuantizer(nn.Module):
    """K code vectors of D numbers, their EMA statistics, nearest-code lookup and dead-code restarts."""

    def __init__(self, codes: int, dim: int, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("codebook", torch.randn(codes, dim))
        self.register_buffer("counts", torch.ones(codes))  # N_k: assignments per batch, moving average
        self.register_buffer("sums", self.codebook.clone())  # m_k = N_k e_k

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """argmin_k ||z_n - e_k||^2 for each row of ``z`` (N x D)."""
        e = self.codebook
        distances = (z * z).sum(1, keepdim=True) - 2 * z @ e.T + (e * e).sum(1)
        return distances.argmin(1)

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """One step of the moving averages on the batch's encoder outputs ``z`` (N x D) and their codes."""
        one_hot = F.one_hot(codes, len(self.codebook)).to(z.dtype)
        gamma = self.decay
        self.counts.mul_(gamma).add_(one_hot.sum(0), alpha=1 - gamma)
        self.sums.mul_(gamma).add_(one_hot.T @ z, alpha=1 - gamma)
        n = self.counts.sum()
        smoothed = (self.counts + LAPLACE) / (n + len(self.counts) * LAPLACE) * n
        self.codebook.copy_(self.sums / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, threshold: float = DEAD_USAGE) -> torch.Tensor:
        """Move every code whose moving count is below ``threshold`` to a random row of ``z`` (N x D),
        with its statistics reset to ``threshold`` assignments there; returns the restarted codes."""
        dead = torch.nonzero(self.counts < threshold).squeeze(1)
        if len(dead):
            chosen = z[torch.randint(len(z), (len(dead),), device=z.device)]
            self.codebook[dead] = chosen
            self.counts[dead] = threshold
            self.sums[dead] = threshold * chosen
        return dead


class VQVAE(LatentVariableModel):
    family = "vqvae"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        prior: CodePrior,
        image_shape: tuple[int, int, int],
        codes: int,
        code_dim: int,
        commitment: float,
        decay: float,
        prior_epochs: int,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.likelihood, self.prior = encoder, decoder, likelihood, prior
        self.quantizer = VectorQuantizer(codes, code_dim, decay)
        self.image_shape = tuple(image_shape)
        self.grid = (self.image_shape[1] // 4, self.image_shape[2] // 4)
        self.positions = self.grid[0] * self.grid[1]
        self.codes, self.code_dim = codes, code_dim
        self.latent_dim = code_dim * self.positions  # encode / decode: the grid of code vectors, flattened
        self.commitment = commitment
        self.prior_epochs = prior_epochs
        self.register_buffer("stage", torch.zeros(()))  # 0: autoencoder (uniform prior), 1: the prior trains/is trained

    # -- the stages ---------------------------------------------------------------------------------

    def stages(self) -> tuple[Stage, ...]:
        if self.prior_epochs == 0:
            return STAGES[:1]
        return (STAGES[0], Stage(STAGES[1].name, self.prior_epochs, STAGES[1].summary))

    def enter_stage(self, index: int) -> None:
        if not 0 <= index < len(self.stages()):
            raise VaelabError(f"the vqvae model trains in {len(self.stages())} stages; there is no stage {index}")
        frozen = (self.encoder, self.decoder, self.likelihood) if index == 1 else (self.prior,)
        for module in (self.encoder, self.decoder, self.likelihood, self.prior):
            module.requires_grad_(module not in frozen)
        self.stage.fill_(index)

    @property
    def learned_prior(self) -> bool:
        return bool(self.stage >= 1)

    def networks(self) -> list[nn.Module]:
        return [self.encoder, self.decoder, self.prior]

    # -- the pieces ---------------------------------------------------------------------------------

    def z_e(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's grid, B x D x h x w."""
        return self.run_network(self.encoder, x)

    def quantize(self, z_e: torch.Tensor) -> torch.Tensor:
        """The nearest code of each grid vector: B x D x h x w -> B x P indices (raster order)."""
        b = len(z_e)
        return self.quantizer.nearest(_rows(z_e)).reshape(b, self.positions)

    def vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of B x P codes as the grid B x D x h x w."""
        e = self.quantizer.codebook[codes]  # B x P x D
        return e.transpose(1, 2).reshape(len(codes), self.code_dim, *self.grid)

    def p_x(self, z_q: torch.Tensor) -> Distribution:
        return self.likelihood(self.run_network(self.decoder, z_q))

    def log_prior(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(c) per example: the learned prior's once it is trained, else uniform, -P log K."""
        if not self.learned_prior:
            return codes.new_full((len(codes),), -self.positions * math.log(self.codes), dtype=torch.float32)
        return self.prior.log_prob(codes, self.run_network(self.prior, codes))

    # -- the protocol -------------------------------------------------------------------------------

    def elbo(self, x: torch.Tensor, ctx: Context) -> ElboParts:
        if not len(x):
            return ElboParts(x.new_zeros(0), x.new_zeros(0))
        z_e = self.z_e(x)
        codes = self.quantize(z_e)
        counts = torch.bincount(codes.flatten(), minlength=self.codes)
        if self.training and not self.learned_prior:  # the codebook learns in the first stage only
            if ctx.shard is not None:
                raise VaelabError(
                    "the vqvae family's EMA codebook updates from the whole batch's codes: "
                    "data-parallel training is not supported"
                )
            rows = _rows(z_e.detach())
            self.quantizer.ema_update(rows, codes.flatten())
            self.quantizer.restart_dead(rows)
        e = self.vectors(codes)
        z_q = z_e + (e - z_e).detach()  # straight through: the decoder's gradient reaches the encoder
        reconstruction = -self.p_x(z_q).log_prob(x)
        commitment = (z_e - e.detach()).pow(2).flatten(1).sum(1)
        usage = {
            "commitment": commitment.detach(),
            "perplexity": perplexity(counts).expand(len(x)),
            "codes_used": ((counts > 0).sum() / self.codes).float().expand(len(x)),
        }
        return ElboParts(reconstruction, -self.log_prior(codes), None, usage, self.commitment * commitment)

    @torch.no_grad()
    def log_likelihood_bound(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """log p(x | c(x)) + log p(c(x)) per image: the ELBO of the one-hot posterior, exact (no sampling)."""
        was_training = self.training
        self.eval()
        try:
            parts = self.elbo(x, ctx)
        finally:
            self.train(was_training)
        return -(parts.reconstruction + parts.kl)

    @torch.no_grad()
    def codes_of(self, x: torch.Tensor) -> torch.Tensor:
        """The code grid of each image, B x P indices in raster order."""
        return self.quantize(self.z_e(self.as_images(x)))

    @torch.no_grad()
    def code_usage(self, x: torch.Tensor) -> torch.Tensor:
        """How many times each of the K codes is chosen over the images' grids."""
        return torch.bincount(self.quantize(self.z_e(x)).flatten(), minlength=self.codes)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen code vectors, B x D*h*w (the grid B x D x h x w, flattened)."""
        return self.vectors(self.quantize(self.z_e(x))).flatten(1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean image for each grid of vectors (B x D*h*w; not snapped to the codebook)."""
        return self.p_x(z.reshape(len(z), self.code_dim, *self.grid)).mean.clamp(0, 1)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Mean images of B x P code indices."""
        return self.p_x(self.vectors(codes)).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images of ``n`` code grids drawn from the prior (the learned one once trained, else uniform)."""
        device = self.quantizer.codebook.device
        if self.learned_prior:
            codes = self.prior.sample(n, generator, device)
        else:
            codes = torch.randint(self.codes, (n, self.positions), generator=generator).to(device)
        return self.decode_codes(codes)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_codes(self.quantize(self.z_e(x)))

    @torch.no_grad()
    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start p(x | c) at the data's mean intensity per channel (``model.decoder_bias = data-mean``)."""
        self.decoder.set_output_bias(mean_image, self.likelihood.output_for_mean)


def _rows(grid: torch.Tensor) -> torch.Tensor:
    """B x D x h x w -> (B*h*w) x D, positions in raster order within each example."""
    return grid.flatten(2).transpose(1, 2).reshape(-1, grid.shape[1])
