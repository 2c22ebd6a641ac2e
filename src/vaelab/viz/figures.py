"""Figures of a trained VAE: manifolds, latent scatters, loss curves, samples, reconstructions.

Every function returns a matplotlib :class:`~matplotlib.figure.Figure`; :func:`save_figure` writes
it atomically as PNG, SVG or PDF (the path's suffix) and closes it; :class:`FigureFormat` is the one
choice of format and resolution that ``write_run_figures`` (and so ``train``, ``plot`` and
``reproduce``) hands down. Model work runs under ``torch.no_grad`` in eval mode (the
model's mode is restored afterwards), decodes and encodes in batches, and returns to the CPU.

Latent grids follow the study (and Keras' VAE example): rows top to bottom have the second
coordinate decreasing, columns left to right the first increasing. For a correlated prior
N(0, L Lᵀ) the grid is laid out in the prior's whitened coordinates u and decoded at z = L u, so
the picture covers the prior's mass; the z points that were decoded are drawn beside it. Any other
prior but N(0, I) (a learned Gaussian, a mixture, the VampPrior) gets its grid axis by axis at z =
centre + scale ⊙ u, where u ∈ [-3, 3] is the prior's ±3σ or, for one that is no Gaussian, the central
99.73% of its samples; the tick labels are z.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from vaelab.data import to_unit_float
from vaelab.errors import VaelabError
from vaelab.io import atomic_write
from vaelab.model import VAE
from vaelab.viz.grid import image_grid

DPI = 110
DPI_RANGE = (20, 1200)  # below, text is unreadable; above, a figure is hundreds of megapixels
FORMATS = ("png", "svg", "pdf")
BATCH = 1000
PRIOR_FRAME_SAMPLES = 10_000  # draws that place a grid over a prior that is no Gaussian
PRIOR_MASS_QUANTILES = (0.00135, 0.5, 0.99865)  # the central 99.73% (a Gaussian's ±3σ) and the median
COLLAPSED_VARIANCE = 0.01  # Cov_x(E_q[z_j]) at or below this: an inactive unit (Burda et al. 2016, as vaelab.eval)
LOSS_TERMS = (("total", "total (negative ELBO)"), ("reconstruction", "reconstruction"), ("kl", "KL"))
SPLIT_STYLE = {"train": ("C0", "-"), "validation": ("C1", "-")}

ArrayLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class FigureFormat:
    """How figures are written: ``kind`` png, svg or pdf, and ``dpi`` (a PNG's resolution; the
    resolution of the images embedded in an SVG or PDF, whose lines and text are vectors)."""

    kind: str = "png"
    dpi: int = DPI

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:
            raise VaelabError(f"the figure format must be one of {', '.join(FORMATS)}, got {self.kind!r}")
        low, high = DPI_RANGE
        if isinstance(self.dpi, bool) or not isinstance(self.dpi, int) or not low <= self.dpi <= high:
            raise VaelabError(f"the figures' dpi must be a whole number from {low} to {high}, got {self.dpi!r}")

    def file_name(self, name: str) -> str:
        """``name`` (e.g. ``samples.png``) with this format's suffix."""
        return Path(name).stem + "." + self.kind


# --------------------------------------------------------------------------------------- helpers


def _subplots(*args, figsize: tuple[float, float], **kwargs):
    """``plt.subplots`` without pyplot: no global backend or figure registry is touched, so the
    library works the same in scripts, servers and notebooks (where a Figure displays inline)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


@contextlib.contextmanager
def _inference(model: VAE) -> Iterator[torch.device]:
    """no_grad + eval mode for the duration, restoring the model's mode; yields its device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            yield param.device if param is not None else torch.device("cpu")
    finally:
        model.train(was_training)


def _as_float_images(x: ArrayLike) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return to_unit_float(x)
    return x.float()


def _numpy(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _is_correlated(model: VAE) -> bool:
    return model.prior.correlated_frame() is not None


def _prior_drawing(model: VAE) -> dict[str, Any]:
    """How the scatters draw the prior: nothing extra for N(0, I) (their default circles), the 1σ / 2σ
    ellipses of any other Gaussian, and the density of a prior that is not one (a mixture, the VampPrior)."""
    gaussian = model.prior.gaussian()
    if gaussian is None:
        with _inference(model) as device:
            prior = model.p_z()

            def log_density(z: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return prior.log_prob(torch.as_tensor(z, dtype=torch.float32, device=device)).cpu().numpy()

            return {"prior_log_density": log_density}
    loc, L = (t.detach().float().cpu() for t in gaussian)
    if not loc.any() and torch.equal(L, torch.eye(len(loc))):
        return {}
    return {"prior_scale_tril": L, "prior_loc": loc}


def encode_means(model: VAE, x: ArrayLike, batch_size: int = BATCH) -> torch.Tensor:
    """Posterior means for images ``x`` (float in [0, 1] or uint8), encoded in batches; on CPU."""
    x = _as_float_images(x)
    with _inference(model) as device:
        parts = [model.encode(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    if not parts:
        return torch.empty(0, model.latent_dim)
    return torch.cat(parts)


def decode_latents(model: VAE, z: torch.Tensor, batch_size: int = BATCH) -> torch.Tensor:
    """Mean images for latents ``z`` (N x d), decoded in batches; on CPU."""
    with _inference(model) as device:
        parts = [model.decode(z[i : i + batch_size].to(device)).cpu() for i in range(0, len(z), batch_size)]
    return torch.cat(parts)


def _grid_values(n: int, span: float) -> torch.Tensor:
    if n < 1:
        raise VaelabError(f"the grid needs n >= 1 points per side, got {n}")
    if not span > 0:
        raise VaelabError(f"the grid span must be > 0, got {span}")
    return torch.linspace(-span, span, n)


def _u_grid(
    n: int, span: float, latent_dim: int, fixed: Mapping[int, float] | None = None, dims: tuple[int, int] = (0, 1)
) -> torch.Tensor:
    """n*n x d grid in display order: row r has u[dims[1]] = values[n-1-r], column c has u[dims[0]] = values[c]."""
    values = _grid_values(n, span)
    u = torch.zeros(n * n, latent_dim)
    u[:, dims[0]] = values.repeat(n)
    u[:, dims[1]] = values.flip(0).repeat_interleave(n)
    for dim, value in (fixed or {}).items():
        u[:, dim] = value
    return u


def _axis_frame(model: VAE) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(centre, scale) per dimension for a grid laid out axis by axis at z = centre + scale ⊙ u, so that
    u ∈ [-3, 3] covers the prior's mass: a diagonal Gaussian's mean and standard deviations, and for a
    prior that is no Gaussian (a mixture, the VampPrior) the median of samples and a sixth of their
    central 99.73% (a Gaussian's ±3σ). None for N(0, I) (z = u) and the correlated prior (z = loc + L u)."""
    if _is_correlated(model):
        return None
    gaussian = model.prior.gaussian()
    if gaussian is not None:
        loc, L = (t.detach().float().cpu() for t in gaussian)
        if torch.equal(L, torch.diag(L.diagonal())):
            if not loc.any() and torch.equal(L, torch.eye(len(loc))):
                return None
            return loc, L.diagonal()
    with _inference(model), torch.random.fork_rng():
        torch.manual_seed(0)  # the same grid every time the figure is drawn
        z = model.p_z().sample((PRIOR_FRAME_SAMPLES,)).float().cpu()
    low, centre, high = torch.quantile(z, torch.tensor(PRIOR_MASS_QUANTILES), dim=0)
    return centre, ((high - low) / 6).clamp_min(1e-6)


def _to_prior_geometry(model: VAE, u: torch.Tensor) -> torch.Tensor:
    """z = loc + L u for a correlated prior, z = centre + scale ⊙ u for any other but N(0, I)
    (:func:`_axis_frame`), and the grid itself (z = u) for the standard one."""
    if _is_correlated(model):
        loc, L = (t.detach().float().cpu() for t in model.prior.correlated_frame())
        return loc + u @ L.T
    frame = _axis_frame(model)
    if frame is None:
        return u
    centre, scale = frame
    return centre + scale * u


def manifold_latents(model: VAE, n: int = 20, span: float = 3.0, dims: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """The n*n x d latents :func:`latent_manifold` decodes, in display order (row-major).

    Row r, column c has u[dims[0]] = values[c], u[dims[1]] = values[n-1-r] and the other dimensions 0,
    with values = linspace(-span, span, n); the latent is u itself for the standard prior and L u for a
    correlated prior.
    """
    d = model.latent_dim
    if d < 2:
        raise VaelabError(f"a 2-D latent manifold needs latent_dim >= 2, the model has {d}")
    if len(set(dims)) != 2 or not all(0 <= a < d for a in dims):
        raise VaelabError(f"a manifold's axes must be two different dimensions of 0..{d - 1}, got {tuple(dims)}")
    return _to_prior_geometry(model, _u_grid(n, span, d, dims=dims))


def cross_section_latents(
    model: VAE, value: float, n: int = 15, span: float = 3.0, axes: tuple[int, int, int] = (0, 1, 2)
) -> torch.Tensor:
    """The n*n x d latents of one :func:`manifold_cross_sections` panel: the grid over dimensions
    ``axes[0]`` (columns) and ``axes[1]`` (rows) with dimension ``axes[2]`` = value (default: the
    (z0, z1) grid at z2 = value). Other dimensions are 0. For a correlated prior the grid is in u and
    mapped by L."""
    d = model.latent_dim
    if d < 3:
        raise VaelabError(f"cross-sections at a fixed third dimension need latent_dim >= 3, the model has {d}")
    if len(set(axes)) != 3 or not all(0 <= a < d for a in axes):
        raise VaelabError(f"cross-section axes must be three different dimensions of 0..{d - 1}, got {tuple(axes)}")
    grid = _u_grid(n, span, d, {axes[2]: float(value)}, dims=(axes[0], axes[1]))
    return _to_prior_geometry(model, grid)


def sweep_axes(variances: Sequence[float]) -> tuple[int, int, int]:
    """(grid x, grid y, fixed) for cross-sections: the grid over the two dimensions whose posterior means
    vary most (in index order), the panels along the next; so a collapsed dimension is never swept."""
    order = [int(j) for j in np.argsort(-np.asarray(variances, dtype=np.float64), kind="stable")]
    first, second = sorted(order[:2])
    return first, second, order[2]


def _tick_positions(n: int, size: int, padding: int = 2) -> np.ndarray:
    return padding + np.arange(n) * (size + padding) + size / 2 - 0.5


def _fmt(value: float) -> str:
    return f"{round(float(value), 1) + 0.0:.1f}"  # + 0.0 turns -0.0 into 0.0


def _label_step(n: int, max_labels: int = 25) -> int:
    """Label every grid value up to ``max_labels`` per axis (Keras' example labels all of them)."""
    return max(1, math.ceil(n / max_labels))


def _show_latent_grid(
    ax,
    images: torch.Tensor,
    n: int,
    span: float,
    names: tuple[str, str],
    frame: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (1.0, 1.0)),
) -> None:
    """A decoded n x n grid on ``ax`` with the grid's coordinates as tick labels (Keras' example): on
    the axes (x, y), centre + scale ⊙ u for ``frame`` = ((centre x, centre y), (scale x, scale y))."""
    _, _, height, width = images.shape
    grid = image_grid(images, nrow=n, padding=2, pad_value=0.0)
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    values = _grid_values(n, span).numpy()
    (cx, cy), (sx, sy) = frame
    step = _label_step(n)
    keep = np.arange(0, n, step)
    ax.set_xticks(_tick_positions(n, width)[keep])
    ax.set_xticklabels([_fmt(cx + sx * v) for v in values[keep]])
    ax.set_yticks(_tick_positions(n, height)[keep])
    ax.set_yticklabels([_fmt(cy + sy * v) for v in values[::-1][keep]])
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.tick_params(labelsize=7 if len(keep) > 12 else 8)
    if len(keep) > 16:
        ax.tick_params(axis="x", labelrotation=90)


def _prior_ellipses(
    ax, cov2: np.ndarray, light: bool = False, label: bool = True, centre: tuple[float, float] = (0.0, 0.0)
) -> None:
    """Draw the 1σ and 2σ contours of N(centre, cov2) (2 x 2) on ``ax``."""
    eigenvalues, eigenvectors = np.linalg.eigh(cov2)
    major = eigenvectors[:, 1]
    angle = math.degrees(math.atan2(major[1], major[0]))
    for k, style in ((1, "-"), (2, "--")):
        ax.add_patch(
            Ellipse(
                centre,
                width=2 * k * math.sqrt(max(eigenvalues[1], 0.0)),
                height=2 * k * math.sqrt(max(eigenvalues[0], 0.0)),
                angle=angle,
                fill=False,
                edgecolor="0.55" if light else "black",
                linestyle=style,
                linewidth=0.8 if light else 1.2,
                alpha=0.7 if light else 0.9,
                label=f"prior {k}σ" if label else None,
                zorder=3,
            )
        )


def _density_contours(ax, points: np.ndarray, log_density: Callable[[np.ndarray], np.ndarray], n: int = 120) -> None:
    """Contours of a 2-D density over the points' extent, at the levels that hold 39% and 86% of its
    mass there (what the 1σ / 2σ ellipses of a Gaussian hold)."""
    lo, hi = points.min(0), points.max(0)
    pad = 0.15 * (hi - lo) + 1e-3
    xs, ys = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n), np.linspace(lo[1] - pad[1], hi[1] + pad[1], n)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    density = np.exp(log_density(grid).astype(np.float64)).reshape(n, n)
    mass = np.sort(density.ravel())[::-1]
    cumulative = np.cumsum(mass) / max(mass.sum(), 1e-300)
    levels = sorted({float(mass[min(np.searchsorted(cumulative, q), len(mass) - 1)]) for q in (0.393, 0.865)})
    if len(levels) == 2 and levels[0] < levels[1]:
        ax.contour(xs, ys, density, levels=levels, colors="black", linestyles=["--", "-"], linewidths=1.0, zorder=3)


def _class_names(labels: np.ndarray, class_names: Sequence[str] | None) -> dict[int, str]:
    names = list(class_names or ())
    return {int(c): (names[int(c)] if 0 <= int(c) < len(names) else str(int(c))) for c in np.unique(labels)}


def _scatter_classes(ax, points: np.ndarray, labels: np.ndarray, class_names, size: float = 4.0):
    """Scatter ``points`` (N x 2 or N x 3) coloured by class; returns (handles, names) for a legend."""
    names = _class_names(labels, class_names)
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    handles, texts = [], []
    for i, (cls, name) in enumerate(sorted(names.items())):
        mask = labels == cls
        color = cmap(i % cmap.N)
        coords = [points[mask, j] for j in range(points.shape[1])]
        handle = ax.scatter(*coords, s=size, color=color, alpha=0.6, linewidths=0, label=name)
        handles.append(handle)
        texts.append(name)
    return handles, texts


def _check_means_labels(means: ArrayLike, labels: ArrayLike, min_dim: int) -> tuple[np.ndarray, np.ndarray]:
    points = _numpy(means).astype(np.float64)
    labels = _numpy(labels).reshape(-1)
    if points.ndim != 2 or points.shape[1] < min_dim:
        raise VaelabError(f"latent means must be N x d with d >= {min_dim}, got shape {points.shape}")
    if len(points) != len(labels):
        raise VaelabError(f"{len(points)} latent means but {len(labels)} labels; they must match")
    return points, labels


def _legend(fig: Figure, ax, handles, texts) -> None:
    if not handles:
        return
    ax.legend(
        handles,
        texts,
        title="class",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        markerscale=3,
        fontsize=8,
        title_fontsize=9,
        frameon=False,
    )


def _other_dims_note(latent_dim: int, dims: tuple[int, int], symbol: str) -> str:
    if latent_dim <= 2:
        return ""
    if dims != (0, 1):
        return f"\n(the two most active of {latent_dim} dimensions; the other {latent_dim - 2} fixed at 0)"
    if latent_dim == 3:
        return f"\n(other dimensions fixed: {symbol}2 = 0)"
    return f"\n(other dimensions fixed: {symbol}2..{symbol}{latent_dim - 1} = 0)"


# --------------------------------------------------------------------------------------- figures


def latent_manifold(model: VAE, n: int = 20, span: float = 3.0, dims: tuple[int, int] = (0, 1)) -> Figure:
    """The study's n x n grid of decoded digits over [-span, span]² of dimensions ``dims`` (the prior's
    geometry if correlated), the other dimensions at 0."""
    z = manifold_latents(model, n, span, dims)
    images = decode_latents(model, z)
    d, (a, b) = model.latent_dim, dims
    if not _is_correlated(model):
        fig, ax = _subplots(figsize=(8, 8.4))
        frame = _axis_frame(model)
        if frame is None:
            _show_latent_grid(ax, images, n, span, (f"z[{a}]", f"z[{b}]"))
            ax.set_title(f"Decoded latent manifold, z ∈ [{-span:g}, {span:g}]²" + _other_dims_note(d, dims, "z"))
        else:
            centre, scale = (t.tolist() for t in frame)
            axes_frame = ((centre[a], centre[b]), (scale[a], scale[b]))
            _show_latent_grid(ax, images, n, span, (f"z[{a}]", f"z[{b}]"), axes_frame)
            ranges = ", ".join(
                f"z[{j}] ∈ [{_fmt(centre[j] - span * scale[j])}, {_fmt(centre[j] + span * scale[j])}]" for j in dims
            )
            title = (
                f"Decoded latent manifold over the prior's mass: {ranges}\n(the prior's centre ± {span:g} × its spread"
            )
            title += "; other dimensions at its centre)" if d > 2 else ")"
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        return fig

    L = model.prior.correlated_frame()[1].detach().float().cpu().numpy()
    fig, (ax, side) = _subplots(1, 2, figsize=(11.5, 8), gridspec_kw={"width_ratios": [3, 1.35]})
    _show_latent_grid(ax, images, n, span, (f"u[{a}]", f"u[{b}]"))
    note = _other_dims_note(d, dims, "u")
    ax.set_title(f"Decoded manifold in the prior's geometry: z = L u, u ∈ [{-span:g}, {span:g}]²" + note)
    # the decoded z points: a tilted lattice in z space
    zn = z[:, [a, b]].numpy()
    side.scatter(zn[:, 0], zn[:, 1], s=3, color="C0", alpha=0.6, label="decoded z")
    corners = {"top-left": 0, "top-right": n - 1, "bottom-left": n * (n - 1), "bottom-right": n * n - 1}
    for name, idx in corners.items():
        side.scatter(zn[idx, 0], zn[idx, 1], s=25, color="C3", zorder=4)
        side.annotate(
            f"{name}\n({zn[idx, 0]:.1f}, {zn[idx, 1]:.1f})",
            (zn[idx, 0], zn[idx, 1]),
            fontsize=7,
            ha="center",
            va="bottom" if zn[idx, 1] >= 0 else "top",
            xytext=(0, 4 if zn[idx, 1] >= 0 else -4),
            textcoords="offset points",
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )
    cov = (L @ L.T)[:2, :2]
    _prior_ellipses(side, cov, light=False)
    side.set_aspect("equal", adjustable="datalim")
    side.set_xlabel("z[0]")
    side.set_ylabel("z[1]")
    side.set_title("grid points in z space", fontsize=10)
    side.legend(fontsize=7, loc="lower right")
    side.grid(alpha=0.3)
    l2 = np.array2string(L[:2, :2], precision=2, suppress_small=True).replace("\n", "")
    fig.text(
        0.5,
        0.01,
        f"Tiles are laid out on a square grid in u and decoded at z = L u with L = chol(Σ)[:2,:2] = {l2}; "
        f"corner z values are marked on the right.",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def latent_scatter(
    means: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str] | None = None,
    prior_scale_tril: ArrayLike | None = None,
    prior_loc: ArrayLike | None = None,
    prior_log_density: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Figure:
    """Latent means (first two dimensions) coloured by class, with the prior's 1σ/2σ contours: those of
    N(prior_loc, L Lᵀ) given its ``prior_scale_tril``, of N(0, I) by default, or, given the log-density
    of a prior that is not Gaussian (points N x 2 -> N), the contours of that density."""
    points, labels = _check_means_labels(means, labels, 2)
    fig, ax = _subplots(figsize=(8, 6.8))
    handles, texts = _scatter_classes(ax, points[:, :2], labels, class_names)
    if prior_log_density is not None:
        _density_contours(ax, points[:, :2], prior_log_density)
        title = "Latent means of the test set, with the prior's density contours"
    elif prior_scale_tril is not None:
        L = _numpy(prior_scale_tril).astype(np.float64)
        centre = (0.0, 0.0) if prior_loc is None else tuple(float(v) for v in _numpy(prior_loc)[:2])
        _prior_ellipses(ax, (L @ L.T)[:2, :2], light=False, centre=centre)
        kind = "correlated" if np.any(np.tril(L[:2, :2], -1)) else "learned"
        title = f"Latent means of the test set, with the {kind} Gaussian prior's 1σ / 2σ ellipses"
    else:
        _prior_ellipses(ax, np.eye(2), light=True)
        title = "Latent means of the test set, with the N(0, I) prior's 1σ / 2σ circles"
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    if ax.patches:
        ax.add_artist(ax.legend(handles=list(ax.patches[:2]), loc="lower right", fontsize=8))
    _legend(fig, ax, handles, texts)
    fig.tight_layout()
    return fig


def latent_scatter_3d(means: ArrayLike, labels: ArrayLike, class_names: Sequence[str] | None = None) -> Figure:
    """Latent means (first three dimensions) in a 3-D scatter coloured by class, on equal axes, so a
    dimension whose means barely vary (a collapsed one) is drawn flat instead of stretched to fill its
    axis; each axis label gives the spread (standard deviation) of its means."""
    points, labels = _check_means_labels(means, labels, 3)
    fig = Figure(figsize=(8.5, 7))
    ax = fig.add_subplot(projection="3d")
    handles, texts = _scatter_classes(ax, points[:, :3], labels, class_names, size=6.0)
    spread = points[:, :3].std(0)
    for j, (set_label, pad) in enumerate(((ax.set_xlabel, 8), (ax.set_ylabel, 8), (ax.set_zlabel, 10))):
        set_label(f"z[{j}] (sd {spread[j]:.2g})", labelpad=pad)
    # one scale on all three axes (a cube): ax.set_aspect("equal") would squash a flat axis to nothing
    centre = (points[:, :3].max(0) + points[:, :3].min(0)) / 2
    half = max(float((points[:, :3].max(0) - points[:, :3].min(0)).max()) / 2, 1e-6) * 1.05
    for j, set_lim in enumerate((ax.set_xlim, ax.set_ylim, ax.set_zlim)):
        set_lim(centre[j] - half, centre[j] + half)
    ax.set_box_aspect((1, 1, 1))
    title = "Latent means of the test set (3-D, equal axes)"
    flat = [f"z{j}" for j in range(3) if spread[j] ** 2 <= COLLAPSED_VARIANCE]
    if flat:
        title += f"\n{', '.join(flat)} barely varies: collapsed to the prior"
    ax.set_title(title)
    _legend(fig, ax, handles, texts)
    fig.tight_layout()
    return fig


def pairwise_projections(
    means: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str] | None = None,
    prior_scale_tril: ArrayLike | None = None,
    prior_loc: ArrayLike | None = None,
    prior_log_density: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Figure:
    """Three panels of the latent means: (z0, z1), (z1, z2), (z0, z2), with the prior's marginal 1σ/2σ
    (N(0, I) by default; none for a prior given by its density, whose marginals are not drawn)."""
    points, labels = _check_means_labels(means, labels, 3)
    cov = np.eye(points.shape[1])
    loc = np.zeros(points.shape[1]) if prior_loc is None else _numpy(prior_loc).astype(np.float64)
    if prior_scale_tril is not None:
        L = _numpy(prior_scale_tril).astype(np.float64)
        cov = L @ L.T
    fig, axes = _subplots(1, 3, figsize=(15, 5.2))
    handles, texts = [], []
    for ax, (i, j) in zip(axes, ((0, 1), (1, 2), (0, 2)), strict=True):
        handles, texts = _scatter_classes(ax, points[:, [i, j]], labels, class_names, size=3.0)
        if prior_log_density is None:
            ellipse = cov[np.ix_([i, j], [i, j])]
            _prior_ellipses(ax, ellipse, light=prior_scale_tril is None, label=False, centre=(loc[i], loc[j]))
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(f"z[{i}]")
        ax.set_ylabel(f"z[{j}]")
        ax.set_title(f"(z{i}, z{j})")
        ax.grid(alpha=0.3)
    _legend(fig, axes[-1], handles, texts)
    if prior_log_density is not None:
        prior = "the prior is not Gaussian: its marginals are not drawn"
    else:
        prior = ("Gaussian prior" if prior_scale_tril is not None else "N(0, I) prior") + " 1σ / 2σ contours"
    fig.suptitle(f"Pairwise projections of the latent means (test set); {prior}")
    fig.tight_layout()
    return fig


def manifold_cross_sections(
    model: VAE,
    values: Sequence[float] = (-1.0, 0.0, 1.0),
    n: int = 15,
    span: float = 3.0,
    axes: tuple[int, int, int] | None = None,
    variances: Sequence[float] | None = None,
) -> Figure:
    """One decoded grid per value of the third of ``axes`` (u for a correlated prior). Without ``axes``:
    the grid over the two dimensions whose posterior means vary most (``variances``, one per dimension:
    Cov_x(E_q[z_j]) on data) and the panels along the next, or (z0, z1) at fixed z2 when no variances
    are given."""
    if not values:
        raise VaelabError("manifold_cross_sections needs at least one value of the fixed dimension")
    if axes is None:
        axes = sweep_axes(variances) if variances is not None else (0, 1, 2)
    gx, gy, fixed = axes
    correlated = _is_correlated(model)
    sym = "u" if correlated else "z"
    frame = _axis_frame(model)
    centre, scale = (
        (t.tolist() for t in frame) if frame is not None else ([0.0] * model.latent_dim, [1.0] * model.latent_dim)
    )
    fig, axs = _subplots(1, len(values), figsize=(5.2 * len(values), 6.2), squeeze=False)
    for ax, value in zip(axs[0], values, strict=True):
        images = decode_latents(model, cross_section_latents(model, value, n, span, axes))
        axes_frame = ((centre[gx], centre[gy]), (scale[gx], scale[gy]))
        _show_latent_grid(ax, images, n, span, (f"{sym}[{gx}]", f"{sym}[{gy}]"), axes_frame)
        ax.set_title(f"{sym}[{fixed}] = {centre[fixed] + scale[fixed] * value:.3g}")
    title = f"Cross-sections of the decoded manifold: grids over ({sym}{gx}, {sym}{gy}), panels at fixed {sym}{fixed}"
    if variances is not None:
        var = [float(v) for v in variances]
        title += f"\ngrid over the two most active dimensions (Cov_x(E_q[z_j]) {var[gx]:.2g}, {var[gy]:.2g}); "
        title += f"{sym}{fixed}: {var[fixed]:.2g}" + (
            ", collapsed, so the panels barely differ" if var[fixed] <= COLLAPSED_VARIANCE else ""
        )
    if correlated:
        title += " (grid in u, decoded at z = L u)"
    others = [j for j in range(model.latent_dim) if j not in axes]
    if frame is not None:
        title += "\n(grid at the prior's centre ± its spread, as a Gaussian's ± σ; other dimensions at its centre)"
    elif others:
        title += f"; {', '.join(f'{sym}{j}' for j in others)} = 0"
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _by_split(records: Iterable[Mapping]) -> dict[str, dict[int, Mapping]]:
    """split -> epoch -> the last record for that (split, epoch)."""
    out: dict[str, dict[int, Mapping]] = {}
    for record in records:
        split, epoch = record.get("split"), record.get("epoch")
        if split is None or epoch is None:
            continue
        out.setdefault(str(split), {})[int(epoch)] = record
    return out


def loss_curves(records: Iterable[Mapping]) -> Figure:
    """Total / reconstruction / KL per image (nats) against epoch: train and validation, test marker."""
    by_split = _by_split(records)
    if not by_split:
        raise VaelabError("no metrics records with 'epoch' and 'split' to plot; is metrics.jsonl empty?")
    last_epoch = max(max(epochs) for epochs in by_split.values())
    fig, axes = _subplots(1, 3, figsize=(14, 4.2))
    for ax, (key, name) in zip(axes, LOSS_TERMS, strict=True):
        for split, (color, style) in SPLIT_STYLE.items():
            points = sorted((e, r[key]) for e, r in by_split.get(split, {}).items() if r.get(key) is not None)
            if points:
                xs, ys = zip(*points, strict=True)
                marker = "o" if len(xs) == 1 else ("." if len(xs) < 30 else None)
                ax.plot(xs, ys, color=color, linestyle=style, marker=marker, label=split, zorder=3)
        tests = [r for _, r in sorted(by_split.get("test", {}).items()) if r.get(key) is not None]
        test = [r[key] for r in tests]
        if test:
            ax.plot(
                [tests[-1].get("kept_epoch", last_epoch)],  # train.keep_best: the epoch whose weights were tested
                [test[-1]],
                marker="*",
                markersize=14,
                markerfacecolor="none",  # hollow and beneath: a validation point at the same place shows through
                markeredgewidth=1.5,
                color="C3",
                linestyle="none",
                label=f"test ({test[-1]:.2f})",
                zorder=2,
            )
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if last_epoch == min(min(epochs) for epochs in by_split.values()):  # one epoch: no fractional ticks
            ax.set_xticks([last_epoch])
            ax.set_xlim(last_epoch - 1, last_epoch + 1)
    fig.suptitle("Loss curves (per image, nats)")
    fig.tight_layout()
    return fig


def nll_against_minutes(points: Sequence[Mapping], reference: tuple[str, float] | None = None) -> Figure:
    """Test NLL (± its standard error) against training minutes, one point per ``points`` entry (``snapshot``,
    ``training_minutes``, ``nll``, ``nll_stderr``, ``k``, ``images``); the final model as a star; ``reference``,
    (label, nats), as a horizontal line."""
    if not points:
        raise VaelabError("no NLL points to draw")
    fig, ax = _subplots(figsize=(7.5, 4.6))
    ordered = sorted(points, key=lambda p: p["training_minutes"])
    xs = [p["training_minutes"] for p in ordered]
    ys = [p["nll"] for p in ordered]
    errors = [p.get("nll_stderr") or 0.0 for p in ordered]
    ax.errorbar(xs, ys, yerr=errors, color="C0", marker="o", markersize=4, capsize=3, label="NLL ± s.e.", zorder=3)
    finals = [p for p in ordered if p["snapshot"] == "final"]
    for p in finals:
        ax.plot(
            [p["training_minutes"]],
            [p["nll"]],
            marker="*",
            markersize=14,
            markerfacecolor="none",
            markeredgewidth=1.5,
            color="C3",
            linestyle="none",
            label=f"final model ({p['nll']:.2f})",
            zorder=4,
        )
    best = min(ordered, key=lambda p: p["nll"])
    ax.annotate(f"{best['nll']:.2f}", (best["training_minutes"], best["nll"]), xytext=(4, -12),
                textcoords="offset points", fontsize=8)  # fmt: skip
    if reference is not None:
        ax.axhline(reference[1], color="C2", linestyle="--", label=f"{reference[0]} ({reference[1]:.2f})")
    first = ordered[0]
    how = first.get("nll_note") or f"IWAE, k = {first['k']}"
    ax.set_title(f"Test NLL ({how}, {first['images']:,} test images) against training time")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("NLL, nats per image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def metrics_against_minutes(points: Sequence[Mapping], labels: Mapping[str, str]) -> Figure:
    """Scores in [0, 1] against training minutes: a line per ``labels`` key (``key: label``) through ``points``
    (``snapshot``, ``training_minutes`` and the keys); the final model's scores as stars."""
    if not points:
        raise VaelabError("no points to draw")
    fig, ax = _subplots(figsize=(7.5, 4.6))
    ordered = sorted(points, key=lambda p: p["training_minutes"])
    xs = [p["training_minutes"] for p in ordered]
    for number, (key, label) in enumerate(labels.items()):
        colour = f"C{number}"
        ax.plot(xs, [p[key] for p in ordered], color=colour, marker="o", markersize=4, label=label)
        finals = [p for p in ordered if p["snapshot"] == "final"]
        ax.plot([p["training_minutes"] for p in finals], [p[key] for p in finals], marker="*", markersize=12,
                markerfacecolor="none", color=colour, linestyle="none")  # fmt: skip
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Disentanglement of the posterior means against training time (stars: the final model)")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def reconstructions(model: VAE, x: ArrayLike, n: int = 10) -> Figure:
    """The first ``n`` inputs (top row) above their reconstructions (bottom row)."""
    x = _as_float_images(x)[:n]
    if len(x) == 0:
        raise VaelabError("reconstructions needs at least one image")
    recon = decode_latents(model, encode_means(model, x))
    fig, axes = _subplots(2, 1, figsize=(max(4.0, 0.8 * len(x)), 2.4))
    for ax, row, name in zip(axes, (x, recon), ("input", "reconstruction"), strict=True):
        ax.imshow(image_grid(row, nrow=len(x)), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    axes[0].set_title("Reconstructions (decoded posterior means)", fontsize=10)
    fig.tight_layout()
    return fig


def prior_samples(model: VAE, n: int = 100, seed: int = 0) -> Figure:
    """Mean images of ``n`` prior samples, drawn with a seeded generator, as a square-ish grid."""
    if n < 1:
        raise VaelabError(f"prior_samples needs n >= 1, got {n}")
    generator = torch.Generator().manual_seed(seed)
    with _inference(model):
        images = model.sample(n, generator=generator).cpu()
    nrow = math.ceil(math.sqrt(n))
    fig, ax = _subplots(figsize=(7, 7 * math.ceil(n / nrow) / nrow + 0.4))
    ax.imshow(image_grid(images, nrow=nrow), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{n} samples from the prior (seed {seed})")
    fig.tight_layout()
    return fig


def interpolation_latents(model: VAE, x_a: ArrayLike, x_b: ArrayLike, steps: int = 10) -> torch.Tensor:
    """``steps`` points on the straight line between the posterior means of x_a and x_b (ends included)."""
    if steps < 2:
        raise VaelabError(f"interpolation needs steps >= 2, got {steps}")
    pair = torch.stack([_single_image(x_a), _single_image(x_b)])
    z = encode_means(model, pair)
    t = torch.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) * z[0] + t * z[1]


def _single_image(x: ArrayLike) -> torch.Tensor:
    x = _as_float_images(x)
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise VaelabError(f"expected one image (C x H x W), got shape {tuple(x.shape)}")
    return x


def interpolation(model: VAE, x_a: ArrayLike, x_b: ArrayLike, steps: int = 10) -> Figure:
    """Decoded straight line between two posterior means, with the two inputs at both ends."""
    a, b = _single_image(x_a), _single_image(x_b)
    decoded = decode_latents(model, interpolation_latents(model, a, b, steps))
    row = torch.cat([a[None], decoded, b[None]])
    _, _, height, width = row.shape
    fig, ax = _subplots(figsize=(max(6.0, 0.75 * len(row)), 1.9))
    ax.imshow(image_grid(row, nrow=len(row)), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = _tick_positions(len(row), width)
    ts = torch.linspace(0.0, 1.0, steps).tolist()
    ax.set_xticks(ticks)
    ax.set_xticklabels(["input A"] + [f"t={t:.2f}" for t in ts] + ["input B"], fontsize=7, rotation=45)
    ax.set_yticks([])
    ax.set_title("Interpolation between two posterior means: z = (1-t) z_A + t z_B", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ files


def save_figure(fig: Figure, path: Path | str, dpi: int = DPI) -> Path:
    """Write ``fig`` atomically in the format its suffix names (png, svg, pdf) and close it; returns the path."""
    path = Path(path)
    kind = FigureFormat(path.suffix.lstrip(".").lower(), dpi).kind
    # no creation date in SVG and PDF, so a figure drawn again from the same model is the same file
    metadata = {"Date": None} if kind == "svg" else {"CreationDate": None} if kind == "pdf" else None
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=kind, dpi=dpi, metadata=metadata))
    return path


def _two_of_different_classes(labels: np.ndarray | None, count: int) -> tuple[int, int]:
    if labels is not None and len(labels) == count:
        differing = np.flatnonzero(labels != labels[0])
        if len(differing):
            return 0, int(differing[0])
    return 0, min(1, count - 1)


def write_run_figures(
    model: VAE,
    figures_dir: Path | str,
    records: Iterable[Mapping] | None,
    x_test_float: ArrayLike,
    y_test: ArrayLike | None,
    class_names: Sequence[str] = (),
    seed: int = 0,
    figure_format: FigureFormat | None = None,
) -> list[Path]:
    """Write every figure that applies to this model into ``figures_dir``; returns the paths written.

    Always: reconstructions, samples, interpolation (two test images of different classes), and
    loss_curves when there are records. For latent_dim 2: latent_manifold and latent_scatter; for 3:
    latent_scatter_3d, latent_projections and manifold_cross_sections (swept over the most active
    dimensions); above 3: latent_manifold (over the two most active dimensions, the others at 0), latent_traversals and, with
    labels, latent_pca. A model that conditions on labels gets those of
    :func:`vaelab.viz.conditional.conditional_figures` instead; a model whose code is quantised to a
    codebook (``can("code_usage")``) gets code_usage instead of the latent figures. Files are ``figure_format``'s kind
    (default PNG at 110 dpi).
    """
    from vaelab.viz.dimensions import latent_pca, latent_traversals

    fmt = figure_format or FigureFormat()
    figures_dir = Path(figures_dir)
    x = _as_float_images(x_test_float)
    if len(x) == 0:
        raise VaelabError("write_run_figures needs at least one test image")
    labels = None if y_test is None else _numpy(y_test).reshape(-1)
    names = list(class_names) or None
    written: list[Path] = []

    def put(name: str, fig: Figure) -> None:
        written.append(save_figure(fig, figures_dir / fmt.file_name(name), dpi=fmt.dpi))

    records = list(records or [])
    if _by_split(records):
        put("loss_curves.png", loss_curves(records))
    if model.can("condition"):  # it decodes under a label: its own figures (vaelab.viz.conditional)
        from vaelab.viz.conditional import conditional_figures

        for name, fig in conditional_figures(model, x, labels, names, seed):
            put(name, fig)
        return written
    put("reconstructions.png", reconstructions(model, x, n=10))
    put("samples.png", prior_samples(model, n=100, seed=seed))
    i, j = _two_of_different_classes(labels, len(x))
    put("interpolation.png", interpolation(model, x[i], x[j], steps=10))

    if model.can("code_usage"):  # a code quantised to a codebook: how it is used; no continuous z to lay out
        from vaelab.viz.codes import codebook_figures

        for name, fig in codebook_figures(model, x):
            put(name, fig)
        return written

    if model.can("layer_means"):  # several stochastic layers: what each one holds (vaelab.viz.hierarchy)
        from vaelab.viz.hierarchy import hierarchy_figures

        for name, fig in hierarchy_figures(model, x, seed):
            put(name, fig)

    d = model.latent_dim
    means = encode_means(model, x) if d >= 3 or labels is not None else None
    if d == 2:
        put("latent_manifold.png", latent_manifold(model))
    if d > 3:  # over the two dimensions whose means vary most: a grid over collapsed ones shows one digit
        put("latent_manifold.png", latent_manifold(model, dims=sweep_axes(means.var(0).tolist())[:2]))
    if d in (2, 3) and labels is not None:
        if d == 2:
            put("latent_scatter.png", latent_scatter(means, labels, names, **_prior_drawing(model)))
        else:
            put("latent_scatter_3d.png", latent_scatter_3d(means, labels, names))
            put("latent_projections.png", pairwise_projections(means, labels, names, **_prior_drawing(model)))
    if d == 3:
        put("manifold_cross_sections.png", manifold_cross_sections(model, variances=means.var(0).tolist()))
    if d > 3:
        put("latent_traversals.png", latent_traversals(model, means))
        if labels is not None:
            put("latent_pca.png", latent_pca(means, labels, names))
    return written
