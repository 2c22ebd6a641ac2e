"""Plain PyTorch versions of vaelab's VAE families, the baseline ``vaelab bench --families`` times them against.

What a competent user writes from the papers with ``torch.distributions`` and nothing of vaelab's:
Burda et al.'s MLP (784-200-200-50 tanh) as ``nn.Sequential``, the distributions with their default
argument checks, ``torch.optim.Adam``, ``loss.item()`` each step, the data from the tutorial
``DataLoader`` of ``reference.py``. Each family changes one piece of the baseline (diagonal Gaussian
posterior, N(0, I) prior, Bernoulli likelihood) and has vaelab's parameter count, so a step costs the
same FLOPs on both sides. ``loss(x)`` is the per-image negative ELBO in nats (the IWAE: the negative
importance-weighted bound). Beside them, Burda et al.'s two-layer model, its ladder variant and its IWAE;
and the families with networks of their own: the conditional VAE on the study's conv pair (``loss(x, y)``),
the joint continuous + Gumbel-softmax categorical VAE on the dense pair, and the VQ-VAE's first stage
(EMA codebook, straight-through, commitment; the per-image loss is what it minimises, the bound plus
the commitment term).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Categorical,
    ContinuousBernoulli,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    kl_divergence,
)
from torch.utils.data import DataLoader, Dataset

from vaelab.bench.reference import MNISTDataset, study_conv_pair

PIXELS, HIDDEN, D = 784, [200, 200], 50
MIN_SCALE = 1e-3  # the learned Gaussians' floor on the scale, the same as vaelab's, so the losses compare


def mlp(widths: list[int], activation: type[nn.Module] = nn.Tanh) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b), activation()] if i < len(widths) - 2 else [nn.Linear(a, b)]
    return layers


class PlainVAE(nn.Module):
    """The baseline: q(z|x) = N(mu, diag sigma^2) from mu and log sigma^2, p(z) = N(0, I), Bernoulli p(x|z)."""

    binarize = True  # dynamically binarised MNIST (Burda et al.); the continuous likelihoods take grey levels
    labelled = False  # loss(x, y): the batches carry their labels (the conditional VAE)

    def __init__(self, encoder_out: int = 2 * D, decoder_out: int = PIXELS, decoder_in: int = D) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), *mlp([PIXELS, *HIDDEN, encoder_out]))
        self.decoder = nn.Sequential(*mlp([decoder_in, *reversed(HIDDEN), decoder_out]))

    def posterior(self, h: torch.Tensor) -> Normal:
        mu, log_var = h.chunk(2, dim=-1)
        return Normal(mu, torch.exp(0.5 * log_var))

    def latent(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, KL per image) from the encoder's output."""
        q = self.posterior(h)
        return q.rsample(), kl_divergence(q, Normal(0.0, 1.0)).sum(-1)

    def reconstruction(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        z, kl = self.latent(self.encoder(x))
        return self.reconstruction(self.decoder(z), x.flatten(1)) + kl


class FullCovariance(PlainVAE):
    """q(z|x) = N(mu, L L^T): the encoder gives mu, log diag(L) and L's strictly lower triangle."""

    def __init__(self) -> None:
        super().__init__(encoder_out=D + D * (D + 1) // 2)
        self.rows, self.cols = torch.tril_indices(D, D, offset=-1)

    def latent(self, h):
        mu, log_diag, lower = h.split([D, D, D * (D - 1) // 2], dim=-1)
        L = torch.zeros(len(h), D, D)
        L[:, self.rows, self.cols] = lower
        L = L + torch.diag_embed(log_diag.exp())
        q = MultivariateNormal(mu, scale_tril=L)
        p = MultivariateNormal(torch.zeros(D), scale_tril=torch.eye(D))
        return q.rsample(), kl_divergence(q, p)


class MADE(nn.Module):
    """Germain et al.'s masked autoencoder, two ELU layers, the context h added unmasked to the first:
    outputs (m, s) for input i see only the inputs before i in ``order``."""

    def __init__(self, order: torch.Tensor, hidden: int) -> None:
        super().__init__()
        degree = torch.arange(hidden) % (D - 1) + 1
        self.register_buffer("mask_in", (degree[:, None] >= order[None, :]).float())
        self.register_buffer("mask_hidden", (degree[:, None] >= degree[None, :]).float())
        self.register_buffer("mask_out", (torch.cat([order, order])[:, None] > degree[None, :]).float())
        self.fc_in, self.fc_context = nn.Linear(D, hidden), nn.Linear(hidden, hidden, bias=False)
        self.fc_hidden, self.fc_out = nn.Linear(hidden, hidden), nn.Linear(hidden, 2 * D)
        with torch.no_grad():
            self.fc_out.bias[D:] = 2.0  # Kingma et al.: each step starts near the identity

    def forward(self, z, h):
        a = F.elu(F.linear(z, self.fc_in.weight * self.mask_in, self.fc_in.bias) + self.fc_context(h))
        a = F.elu(F.linear(a, self.fc_hidden.weight * self.mask_hidden, self.fc_hidden.bias))
        return F.linear(a, self.fc_out.weight * self.mask_out, self.fc_out.bias).chunk(2, dim=-1)


class IAF(PlainVAE):
    """Kingma et al. (2016): N(mu, diag sigma^2) then 2 steps z = sigmoid(s) z + (1 - sigmoid(s)) m,
    orderings reversed between steps; the KL is log q(z) - log p(z) at the sample."""

    def __init__(self, steps: int = 2, hidden: int = max(64, 4 * D)) -> None:
        super().__init__(encoder_out=2 * D + hidden)
        self.hidden = hidden
        order = torch.arange(1, D + 1)
        self.flow = nn.ModuleList(MADE(order if t % 2 == 0 else order.flip(0), hidden) for t in range(steps))

    def latent(self, h):
        mu, log_var, context = h.split([D, D, self.hidden], dim=-1)
        q0 = Normal(mu, torch.exp(0.5 * log_var))
        z = q0.rsample()
        log_q = q0.log_prob(z).sum(-1)
        for made in self.flow:
            m, s = made(z, context)
            gate = torch.sigmoid(s)
            z = gate * z + (1 - gate) * m
            log_q = log_q - F.logsigmoid(s).sum(-1)
        return z, log_q - Normal(0.0, 1.0).log_prob(z).sum(-1)


class MixturePrior(PlainVAE):
    """p(z) = sum_k pi_k N(m_k, diag s_k^2), 10 components, all learned; the KL by one sample."""

    def __init__(self, components: int = 10) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        self.means = nn.Parameter(torch.randn(components, D))
        self.log_scales = nn.Parameter(torch.zeros(components, D))

    def latent(self, h):
        q = self.posterior(h)
        z = q.rsample()
        prior = MixtureSameFamily(
            Categorical(logits=self.logits), Independent(Normal(self.means, self.log_scales.exp()), 1)
        )
        return z, q.log_prob(z).sum(-1) - prior.log_prob(z)


class VampPrior(PlainVAE):
    """Tomczak & Welling (2018): p(z) = 1/K sum_k q(z | u_k), K learned pseudo-inputs u = sigmoid(w) run
    through the encoder every step; the KL by one sample."""

    def __init__(self, components: int = 100) -> None:
        super().__init__()
        self.pseudo_logits = nn.Parameter(torch.logit(torch.rand(components, 1, 28, 28).clamp(1e-6, 1 - 1e-6)))

    def latent(self, h):
        q = self.posterior(h)
        z = q.rsample()
        components = Independent(self.posterior(self.encoder(torch.sigmoid(self.pseudo_logits))), 1)
        prior = MixtureSameFamily(Categorical(logits=torch.zeros(len(self.pseudo_logits))), components)
        return z, q.log_prob(z).sum(-1) - prior.log_prob(z)


class LearnablePrior(PlainVAE):
    """p(z) = N(m, diag s^2), m and log s learned; the KL in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_loc, self.prior_log_scale = nn.Parameter(torch.zeros(D)), nn.Parameter(torch.zeros(D))

    def latent(self, h):
        q = self.posterior(h)
        return q.rsample(), kl_divergence(q, Normal(self.prior_loc, self.prior_log_scale.exp())).sum(-1)


class ContinuousBernoulliLikelihood(PlainVAE):
    """Loaiza-Ganem & Cunningham (2019) on grey levels: torch's ContinuousBernoulli from the logits."""

    binarize = False

    def reconstruction(self, out, x):
        return -ContinuousBernoulli(logits=out).log_prob(x).sum(-1)


class LearnedScaleGaussian(PlainVAE):
    """N(mu(z), diag sigma^2) on grey levels, one learned log-scale per pixel (starting at sigma = 0.1)."""

    binarize = False

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((PIXELS,), math.log(0.1 - MIN_SCALE)))

    def reconstruction(self, out, x):
        return -Normal(out, MIN_SCALE + self.log_scale.exp()).log_prob(x).sum(-1)


class DecodedGaussian(PlainVAE):
    """Kingma & Welling's Gaussian decoder on grey levels: two output maps, the mean and log sigma^2."""

    binarize = False

    def __init__(self) -> None:
        super().__init__(decoder_out=2 * PIXELS)

    def reconstruction(self, out, x):
        mean, log_var = out.chunk(2, dim=-1)
        return -Normal(mean, MIN_SCALE + torch.exp(0.5 * log_var)).log_prob(x).sum(-1)


class LogisticMixture(PlainVAE):
    """Salimans et al. (2017), PixelCNN++'s discretised logistic mixture of 5 components per pixel,
    written on [0, 1] for 8-bit levels x = l / 255 (bins 1/255 wide): the decoder gives the mixture
    logits, the locations and the log-scales."""

    binarize = False

    def __init__(self, components: int = 5) -> None:
        super().__init__(decoder_out=3 * components * PIXELS)
        self.components = components

    def reconstruction(self, out, x):
        logit_probs, means, log_scales = out.view(len(x), 3, self.components, PIXELS).unbind(1)
        log_scales = log_scales.clamp(min=-7.0)
        x = x.unsqueeze(1)
        centered, inv_s = x - means, torch.exp(-log_scales)
        plus_in, min_in = inv_s * (centered + 0.5 / 255), inv_s * (centered - 0.5 / 255)
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log P(x <= 0.5/255), for level 0
        log_one_minus_cdf_min = -F.softplus(min_in)  # for level 255
        mid_in = inv_s * centered
        log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)  # where the bin's mass underflows
        inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(255))
        log_probs = torch.where(x < 0.001, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))
        return -torch.logsumexp(log_probs + F.log_softmax(logit_probs, dim=1), dim=1).sum(-1)


Z1, Z2, LAYER_HIDDEN = 100, 50, [100, 100]  # Burda et al.'s two stochastic layers and the MLPs between them


class TwoLayerVAE(PlainVAE):
    """Burda et al. (2016), two stochastic layers, bottom-up inference: q(z1|x) from 784-200-200 tanh,
    q(z2|z1) and p(z1|z2) from 100-100 tanh MLPs, p(z2) = N(0, I), p(x|z1) from the mirrored decoder.
    The KL of layer 1 (q and p conditioned on different samples) by one sample, of layer 2 in closed form."""

    def __init__(self) -> None:
        super().__init__(encoder_out=2 * Z1, decoder_in=Z1)
        self.up = nn.Sequential(*mlp([Z1, *LAYER_HIDDEN, 2 * Z2]))
        self.down = nn.Sequential(*mlp([Z2, *LAYER_HIDDEN, 2 * Z1]))

    def noise(self, *lead: int) -> tuple[torch.Tensor, torch.Tensor]:
        # one draw for both layers, as vaelab draws it, so that seeded losses compare
        return torch.randn(*lead, Z1 + Z2).split([Z1, Z2], dim=-1)

    def loss(self, x):
        e1, e2 = self.noise(len(x))
        q1 = self.posterior(self.encoder(x))
        z1 = q1.loc + q1.scale * e1
        q2 = self.posterior(self.up(z1))
        z2 = q2.loc + q2.scale * e2
        p1 = self.posterior(self.down(z2))
        kl1 = (q1.log_prob(z1) - p1.log_prob(z1)).sum(-1)
        kl2 = kl_divergence(q2, Normal(0.0, 1.0)).sum(-1)
        return self.reconstruction(self.decoder(z1), x.flatten(1)) + kl1 + kl2


class LadderVAE(TwoLayerVAE):
    """Sønderby et al. (2016) on the same networks: a deterministic pass up (the up MLP reads layer 1's
    mean) gives N(mu^1, s^1) and q(z2|x); q(z1|x, z2) is the precision-weighted product of N(mu^1, s^1)
    and p(z1|z2). Both KLs in closed form."""

    def loss(self, x):
        e1, e2 = self.noise(len(x))
        up1 = self.posterior(self.encoder(x))
        q2 = self.posterior(self.up(up1.loc))
        z2 = q2.loc + q2.scale * e2
        p1 = self.posterior(self.down(z2))
        precision_up, precision_p = up1.scale.pow(-2), p1.scale.pow(-2)
        variance = 1 / (precision_up + precision_p)
        q1 = Normal((up1.loc * precision_up + p1.loc * precision_p) * variance, variance.sqrt())
        z1 = q1.loc + q1.scale * e1
        kl = kl_divergence(q1, p1).sum(-1) + kl_divergence(q2, Normal(0.0, 1.0)).sum(-1)
        return self.reconstruction(self.decoder(z1), x.flatten(1)) + kl


class TwoLayerIWAE(TwoLayerVAE):
    """The bottom-up model trained with Burda et al.'s bound: k samples of (z1, z2) per image,
    log w = log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1), loss
    -(logsumexp_k log w - log k) per image."""

    def __init__(self, k: int = 50) -> None:
        super().__init__()
        self.k = k

    def loss(self, x):
        e1, e2 = self.noise(self.k, len(x))
        q1 = self.posterior(self.encoder(x))
        z1 = q1.loc + q1.scale * e1  # k x B x Z1
        q2 = self.posterior(self.up(z1))
        z2 = q2.loc + q2.scale * e2
        p1 = self.posterior(self.down(z2))
        logits = self.decoder(z1)
        log_px = -self.reconstruction(logits, x.flatten(1).expand_as(logits))
        log_p = p1.log_prob(z1).sum(-1) + Normal(0.0, 1.0).log_prob(z2).sum(-1)
        log_q = q1.log_prob(z1).sum(-1) + q2.log_prob(z2).sum(-1)
        return -(torch.logsumexp(log_px + log_p - log_q, dim=0) - math.log(self.k))


CLASSES, STUDY_D = 10, 2  # the labels (cvae) or categories (gumbel), and the continuous latent dimensions


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | .) per image from the decoder's logits; on grey levels the study's cross-entropy."""
    return F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(-1)


class ConditionalVAE(nn.Module):
    """Sohn et al. (2015) on the study's conv pair and grey levels, as cvae-2d: q(z | x, y) reads the one-hot
    label as 10 constant channels beside the image, p(x | z, y) reads it beside z; 2-D z, p(z) = N(0, I),
    the Bernoulli cross-entropy, the KL in closed form."""

    binarize, labelled = False, True

    def __init__(self) -> None:
        super().__init__()
        self.encoder, decoder = study_conv_pair(1 + CLASSES, 2 * STUDY_D, STUDY_D + CLASSES)
        self.decoder = nn.Sequential(decoder, nn.Flatten())  # logits per image, flat

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(y, CLASSES).to(x.dtype)
        channels = one_hot[:, :, None, None].expand(-1, -1, *x.shape[2:])
        mu, log_var = self.encoder(torch.cat([x, channels], 1)).chunk(2, dim=-1)
        q = Normal(mu, torch.exp(0.5 * log_var))
        z = q.rsample()
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
        return bernoulli_nll(self.decoder(torch.cat([z, one_hot], -1)), x) + kl


TEMPERATURE = 0.5  # the bench's fixed Gumbel-softmax temperature: Jang et al.'s floor, where gumbel-2d's annealing ends
UNIFORM_CLAMP = 1e-6  # keeps -log(-log u) finite


class GumbelSoftmaxVAE(nn.Module):
    """JointVAE's latent (Dupont 2018) on the study's dense pair (784-512-256 ReLU) and grey levels, as
    gumbel-2d: q(z | x) = N(mu, diag sigma^2) in 2 dimensions and q(c | x) = Cat(softmax(logits)) of 10
    from one encoder; the decoder reads [z, y], y = softmax((logits + g) / tau) the Concrete relaxation of c
    (Jang et al. 2017; Maddison et al. 2017), g Gumbel noise, tau fixed; KL(q(z|x) || N(0, I)) and
    KL(q(c|x) || Uniform(10)) exact."""

    binarize, labelled = False, False

    def __init__(self, temperature: float = TEMPERATURE) -> None:
        super().__init__()
        self.temperature = temperature
        self.encoder = nn.Sequential(nn.Flatten(), *mlp([PIXELS, 512, 256, 2 * STUDY_D + CLASSES], nn.ReLU))
        self.decoder = nn.Sequential(*mlp([STUDY_D + CLASSES, 256, 512, PIXELS], nn.ReLU))

    def noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        # z's normal noise, then the Gumbel noise's uniforms made as vaelab makes them, u = Phi(eps) of normal
        # noise (exactly uniform), so that seeded losses compare
        eps, eps_c = torch.randn(n, STUDY_D), torch.randn(n, CLASSES)
        return eps, torch.special.ndtr(eps_c).clamp(UNIFORM_CLAMP, 1 - UNIFORM_CLAMP)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, log_var, logits = self.encoder(x).split([STUDY_D, STUDY_D, CLASSES], dim=-1)
        eps, u = self.noise(len(x))
        q_z = Normal(mu, torch.exp(0.5 * log_var))
        z = q_z.loc + q_z.scale * eps
        relaxed = F.softmax((logits - torch.log(-torch.log(u))) / self.temperature, dim=-1)
        kl_z = kl_divergence(q_z, Normal(0.0, 1.0)).sum(-1)
        kl_c = kl_divergence(Categorical(logits=logits), Categorical(logits=torch.zeros(CLASSES)))
        return bernoulli_nll(self.decoder(torch.cat([z, relaxed], -1)), x) + kl_z + kl_c


CODES, CODE_DIM, GRID = 128, 16, (7, 7)  # vqvae-mnist: K codes of D numbers, a 7 x 7 grid of them per image
COMMITMENT, DECAY, LAPLACE = 0.25, 0.99, 1e-5  # van den Oord et al.'s beta and gamma; Sonnet's smoothing


class Residual(nn.Module):
    """x + Conv1x1(ReLU(Conv3x3(ReLU(x)))), van den Oord et al.'s residual block."""

    def __init__(self, channels: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class VQVAE(nn.Module):
    """van den Oord, Vinyals & Kavukcuoglu (2017), the first stage of vqvae-mnist, on dynamically binarised
    MNIST: convs 32-64 4x4 stride 2, a residual block and a 1x1 conv to a 7 x 7 grid z_e of 16-number
    vectors; each replaced by its nearest of 128 codebook vectors e_k, the decoder's gradient passed straight
    through (z_q = z_e + sg(e - z_e)); the decoder mirrors the encoder. The codebook learns by moving
    averages (the paper's appendix): N_k <- gamma N_k + (1 - gamma) n_k, m_k <- gamma m_k + (1 - gamma) sum of
    the z_e assigned to k, e_k = m_k / N_k (N Laplace-smoothed), and a code chosen less than once per batch
    on the average is restarted at a random z_e of the batch (Dhariwal et al. 2020). The per-image loss is
    -log p(x | c) + 49 log 128 (the one-hot q's KL against the uniform prior) + beta ||z_e - sg(e)||^2."""

    binarize, labelled = True, False

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            Residual(64),
            nn.ReLU(),
            nn.Conv2d(64, CODE_DIM, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(CODE_DIM, 64, 3, padding=1),
            Residual(64),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1),
            nn.Flatten(),
        )
        self.register_buffer("codebook", torch.randn(CODES, CODE_DIM))
        self.register_buffer("ema_count", torch.ones(CODES))  # N_k
        self.register_buffer("ema_sum", self.codebook.clone())  # m_k

    @torch.no_grad()
    def update_codebook(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        one_hot = F.one_hot(codes, CODES).to(z.dtype)
        self.ema_count.mul_(DECAY).add_(one_hot.sum(0), alpha=1 - DECAY)
        self.ema_sum.mul_(DECAY).add_(one_hot.T @ z, alpha=1 - DECAY)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + LAPLACE) / (n + CODES * LAPLACE) * n
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        dead = torch.nonzero(self.ema_count < 1.0).squeeze(1)
        if len(dead):
            chosen = z[torch.randint(len(z), (len(dead),))]
            self.codebook[dead], self.ema_count[dead], self.ema_sum[dead] = chosen, 1.0, chosen

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        z_e = self.encoder(x)  # B x D x 7 x 7
        z = z_e.detach().permute(0, 2, 3, 1).reshape(-1, CODE_DIM)  # one row per grid position
        with torch.no_grad():
            e = self.codebook
            codes = ((z * z).sum(1, keepdim=True) - 2 * z @ e.T + (e * e).sum(1)).argmin(1)
            if self.training:
                self.update_codebook(z, codes)
        e = self.codebook[codes].view(len(x), *GRID, CODE_DIM).permute(0, 3, 1, 2)
        z_q = z_e + (e - z_e).detach()
        commitment = (z_e - e).pow(2).flatten(1).sum(1)
        prior = math.prod(GRID) * math.log(CODES)
        return bernoulli_nll(self.decoder(z_q), x) + prior + COMMITMENT * commitment


class LabelledImages(Dataset):
    """MNISTDataset's images in [0, 1] with their labels."""

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images_uint8, labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0, self.labels[i]


def training_step(
    model: nn.Module, images_uint8: torch.Tensor, batch_size: int = 128, labels: torch.Tensor | None = None
) -> Callable[[], int]:
    """One step of the plain loop per call, as ``reference.training_step``: the next batch from the
    DataLoader (binarised afresh where the family's likelihood is a Bernoulli on binary data; with its
    labels for a conditional model), Adam, ``loss.item()``."""
    if model.labelled and labels is None:
        raise ValueError(f"{type(model).__name__} trains on labelled batches: pass the images' labels")
    dataset = LabelledImages(images_uint8, labels) if model.labelled else MNISTDataset(images_uint8)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def batches():
        while True:
            yield from loader

    xs = batches()

    def step() -> int:
        if model.labelled:
            x, y = next(xs)
        else:
            x, y = next(xs), None
        if model.binarize:
            x = torch.bernoulli(x)
        loss = (model.loss(x, y) if model.labelled else model.loss(x)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        return len(x)

    return step
