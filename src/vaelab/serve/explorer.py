"""What the explorer serves of one model: decode, encode, sample, decoded grids over a plane of the latent
space, the test set's latent means (computed once, at start) and the prior's geometry.

Everything here is plain torch and numpy on tensors already checked by the API; the API layer turns
:class:`~vaelab.errors.VaelabError` into a 4xx answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.distributions import MultivariateNormal

from vaelab.data import load_dataset, to_unit_float
from vaelab.errors import VaelabError
from vaelab.model.base import LatentVariableModel

SCATTER_LIMIT = 5000  # test images whose latent means the scatter shows
SCATTER_SEED = 0  # which ones: a fixed permutation, the same for every model on the same data set
CONTOUR_MASSES = (0.393, 0.865)
NO_POSTERIOR = "its posterior is not shown from an image alone (no closed-form mean and scale, or it needs a label)"  # the mass inside a 2-D Gaussian's 1σ and 2σ ellipses


@dataclass
class Scatter:
    means: np.ndarray  # N x d float32, the posterior means of the test images
    labels: np.ndarray  # N int64
    indices: np.ndarray  # N: which test images (positions in the test split)
    class_names: list[str]
    dataset: str
    note: str = ""  # why there is no scatter, when there is none


@dataclass
class ServedModel:
    """One model as the explorer serves it; built once at start by :func:`prepare`."""

    name: str
    model: LatentVariableModel
    source: str  # "pretrained" or the run directory it came from
    scatter: Scatter
    prior: dict[str, Any]
    can_encode: bool
    test_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def latent_dim(self) -> int:
        return int(self.model.latent_dim)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.model.image_shape)  # type: ignore[return-value]

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "latent_dim": self.latent_dim,
            "image_shape": list(self.image_shape),
            "family": self.model.family,
            "prior": self.prior,
            "can_encode": self.can_encode,
            "dataset": self.scatter.dataset,
            "class_names": self.scatter.class_names,
            "scatter_points": len(self.scatter.labels),
            "test": self.test_metrics,
        }

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images (N x C x H x W in [0, 1]) of latents ``z`` (N x d)."""
        with torch.inference_mode():
            return self.model.decode(z.float())

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior mean, per-dimension scale and covariance of q(z|x) for images ``x`` (N x C x H x W),
        and the reconstruction decoded from the mean."""
        if not self.can_encode:
            raise VaelabError(f"{self.name}: {NO_POSTERIOR}")
        with torch.inference_mode():
            q = self.model.q_z(x.float())
            mean, scale = q.mean, q.stddev
            if isinstance(q, MultivariateNormal):
                cov = q.covariance_matrix
            else:
                cov = torch.diag_embed(scale**2)
            return {"mean": mean, "scale": scale, "cov": cov, "reconstruction": self.model.decode(mean)}

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` prior draws decoded (their latents too, where the prior draws them itself)."""
        generator = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            try:
                z = self.model.prior.sample(n, generator, self.model.q_z)
            except (AttributeError, NotImplementedError):  # a family without a separate prior module
                return self.model.sample(n, generator=generator), None
            return self.model.decode(z), z

    def plane(
        self,
        origin: torch.Tensor,
        axes: torch.Tensor,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        n: int,
    ) -> torch.Tensor:
        """The n x n latents z = origin + a e1 + b e2 of a plane, row-major from the top row (largest b)
        to the bottom, columns from the smallest a: the layout of the study's manifold figures."""
        a = torch.linspace(x_range[0], x_range[1], n)
        b = torch.linspace(y_range[1], y_range[0], n)
        bb, aa = torch.meshgrid(b, a, indexing="ij")
        return origin + aa.reshape(-1, 1) * axes[0] + bb.reshape(-1, 1) * axes[1]


def prepare(
    name: str,
    model: LatentVariableModel,
    source: str,
    dataset: str,
    data_dir: str | None = None,
    scatter_limit: int = SCATTER_LIMIT,
    test_metrics: dict[str, Any] | None = None,
) -> ServedModel:
    """Everything the explorer serves of ``model``, computed once: the scatter, the prior's drawing."""
    model.eval()
    can_encode = _can_encode(model)
    scatter = _scatter(model, dataset, data_dir, scatter_limit) if can_encode else _no_scatter(dataset, "")
    if not can_encode:
        scatter.note = NO_POSTERIOR
    metrics = {k: float(v) for k, v in (test_metrics or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
    return ServedModel(name, model, source, scatter, _prior_drawing(model, scatter), can_encode, metrics)


def _can_encode(model: LatentVariableModel) -> bool:
    if not model.can("q_z"):  # the protocol's posterior over the code decode takes
        return False
    try:
        with torch.inference_mode():
            q = model.q_z(torch.zeros(1, *model.image_shape))
            q.mean, q.stddev  # noqa: B018  (a posterior without closed forms raises here)
    except Exception:  # no closed forms (NotImplementedError), or an encoder that needs more than an image
        return False
    return True


def _no_scatter(dataset: str, note: str) -> Scatter:
    return Scatter(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), [], dataset, note)


def _scatter(model: LatentVariableModel, dataset: str, data_dir: str | None, limit: int) -> Scatter:
    try:
        data = load_dataset(dataset, data_dir or None)
    except VaelabError as err:
        return _no_scatter(dataset, f"no test images: {err}")
    if tuple(data.image_shape) != tuple(model.image_shape):
        return _no_scatter(dataset, f"{dataset}'s images are {data.image_shape}, the model's {model.image_shape}")
    total = len(data.x_test)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(SCATTER_SEED))
    indices = order[: min(limit, total)].sort().values
    x, labels = data.x_test[indices], data.y_test[indices]
    means = []
    try:
        with torch.inference_mode():
            for start in range(0, len(x), 500):
                means.append(model.q_z(to_unit_float(x[start : start + 500])).mean.float())
    except Exception as err:  # a family whose encoder needs more than the images
        return _no_scatter(dataset, f"the test images could not be encoded ({type(err).__name__}: {err})")
    z = torch.cat(means) if means else torch.zeros(0, model.latent_dim)
    return Scatter(
        z.numpy().astype(np.float32),
        labels.numpy().astype(np.int64),
        indices.numpy().astype(np.int64),
        list(data.class_names) or [str(int(c)) for c in sorted(set(labels.tolist()))],
        data.name,
    )


def _prior_drawing(model: LatentVariableModel, scatter: Scatter) -> dict[str, Any]:
    """The prior as the plots draw it: a Gaussian's mean and covariance (the page draws its 1σ / 2σ
    ellipses in whatever plane it shows); another 2-D prior's density contours at the levels that hold
    39% and 86% of its mass (what those ellipses hold)."""
    prior = getattr(model, "prior", None)
    gaussian = prior.gaussian() if prior is not None else None
    if gaussian is not None:
        loc, L = (t.detach().float().cpu() for t in gaussian)
        return {"kind": "gaussian", "loc": loc.tolist(), "cov": (L @ L.T).tolist(), "contours": []}
    if model.latent_dim != 2 or not model.can("p_z"):
        return {"kind": "other", "contours": []}
    return {"kind": "density", "contours": _density_contours(model, scatter)}


def _density_contours(model: LatentVariableModel, scatter: Scatter, n: int = 120) -> list[dict[str, Any]]:
    import contourpy  # matplotlib's own contouring, installed with it

    if len(scatter.means):
        lo, hi = scatter.means.min(0).astype(np.float64), scatter.means.max(0).astype(np.float64)
        pad = 0.15 * (hi - lo) + 1e-3
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = np.array([-4.0, -4.0]), np.array([4.0, 4.0])
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    with torch.inference_mode():
        log_p = model.p_z().log_prob(torch.as_tensor(grid, dtype=torch.float32)).double().numpy()
    density = np.exp(log_p - log_p.max()).reshape(n, n)
    mass = np.sort(density.ravel())[::-1]
    cumulative = np.cumsum(mass) / max(mass.sum(), 1e-300)
    generator = contourpy.contour_generator(xs, ys, density)
    contours = []
    for q, label in zip(CONTOUR_MASSES, ("39%", "86%")):
        level = float(mass[min(int(np.searchsorted(cumulative, q)), len(mass) - 1)])
        lines = [np.round(line, 4).tolist() for line in generator.lines(level) if len(line) > 1]
        contours.append({"mass": label, "lines": lines})
    return contours
