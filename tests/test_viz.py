"""The figures layer: grid tiling, the latents each figure decodes, and the PNG files written."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Ellipse

from vaelab.config import ModelConfig
from vaelab.errors import VaelabError
from vaelab.model import build_vae
from vaelab.viz import (
    FigureFormat,
    cross_section_latents,
    decode_latents,
    encode_means,
    image_grid,
    interpolation,
    interpolation_latents,
    latent_manifold,
    latent_pca,
    latent_scatter,
    latent_scatter_3d,
    latent_traversals,
    loss_curves,
    manifold_cross_sections,
    manifold_latents,
    pairwise_projections,
    prior_samples,
    reconstructions,
    save_figure,
    sweep_axes,
    tile_origin,
    write_run_figures,
)

SHAPE = (1, 28, 28)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_vae(latent_dim: int, prior: str = "standard", arch: str = "mlp"):
    torch.manual_seed(0)
    return build_vae(ModelConfig(arch=arch, latent_dim=latent_dim, hidden=[32], prior=prior), SHAPE)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, *SHAPE), dtype=torch.uint8, generator=g)
    y = torch.arange(64) % 10
    return x.float() / 255, y


def expected_u_grid(n: int, span: float) -> torch.Tensor:
    """Row r (top to bottom) has u1 decreasing, column c has u0 increasing."""
    values = torch.linspace(-span, span, n)
    return torch.tensor([[values[c].item(), values[n - 1 - r].item()] for r in range(n) for c in range(n)])


def assert_png(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# ------------------------------------------------------------------------------------ image_grid


def test_image_grid_shape_and_tile_positions():
    n, h, w, nrow = 5, 4, 6, 3
    images = torch.stack([torch.full((1, h, w), (i + 1) / 10) for i in range(n)])
    grid = image_grid(images, nrow=nrow)
    assert grid.shape == (2 * (h + 2) + 2, 3 * (w + 2) + 2)
    for i in range(n):
        top, left = tile_origin(i, nrow, h, w)
        assert (top, left) == (2 + (i // nrow) * (h + 2), 2 + (i % nrow) * (w + 2))
        np.testing.assert_allclose(grid[top : top + h, left : left + w], (i + 1) / 10)
    # padding and the unused sixth cell keep the pad value
    mask = np.ones_like(grid, dtype=bool)
    for i in range(n):
        top, left = tile_origin(i, nrow, h, w)
        mask[top : top + h, left : left + w] = False
    assert np.all(grid[mask] == 0.0)


def test_image_grid_rgb_uint8_and_short_row():
    images = np.zeros((2, 3, 5, 5), dtype=np.uint8)
    images[1, 0] = 255  # second image pure red
    grid = image_grid(images, nrow=8, padding=1, pad_value=0.5)
    assert grid.shape == (5 + 2, 2 * (5 + 1) + 1, 3)  # only as many columns as images
    np.testing.assert_allclose(grid[1:6, 7:12, 0], 1.0)
    np.testing.assert_allclose(grid[1:6, 7:12, 1:], 0.0)
    assert grid[0, 0, 0] == 0.5
    # N x H x W is accepted as one channel
    assert image_grid(np.ones((3, 4, 4)), nrow=3).shape == (8, 20)
    with pytest.raises(VaelabError):
        image_grid(np.ones((2, 2, 4, 4)), nrow=2)


# ------------------------------------------------------------------------------- grid latents


def test_standard_manifold_latents_are_the_grid_in_display_order():
    model = small_vae(2)
    z = manifold_latents(model, n=5, span=2.0)
    torch.testing.assert_close(z, expected_u_grid(5, 2.0))
    assert z[0].tolist() == [-2.0, 2.0]  # top-left: z0 smallest, z1 largest
    assert z[-1].tolist() == [2.0, -2.0]


def test_correlated_manifold_latents_are_L_times_the_grid():
    model = small_vae(2, prior="correlated")
    L = model.prior.scale_tril
    assert not torch.allclose(L, torch.eye(2))
    u = expected_u_grid(6, 3.0)
    z = manifold_latents(model, n=6, span=3.0)
    torch.testing.assert_close(z, (L @ u.T).T)
    assert not torch.allclose(z, u)
    torch.testing.assert_close(z[:, 0], u[:, 0])  # lower triangular with L00 = 1: z0 = u0 ...
    assert not torch.allclose(z[:, 1], u[:, 1])  # ... but z1 is tilted by the correlation


def test_a_learned_gaussian_priors_manifold_is_its_mean_plus_its_scales_times_the_grid():
    model = small_vae(2, prior="learnable")
    with torch.no_grad():
        model.prior.loc.copy_(torch.tensor([4.0, -1.0]))
        model.prior.log_scale.copy_(torch.tensor([0.5, 2.0]).log())
    z = manifold_latents(model, n=5, span=3.0)
    torch.testing.assert_close(z, torch.tensor([4.0, -1.0]) + torch.tensor([0.5, 2.0]) * expected_u_grid(5, 3.0))
    assert z[0].tolist() == pytest.approx([2.5, 5.0])  # top-left: the prior's mean - 3σ in z0, + 3σ in z1


def test_a_mixture_priors_manifold_covers_the_priors_mass_wherever_it_lies():
    model = small_vae(3, prior="mog")
    with torch.no_grad():
        model.prior.means.copy_(torch.tensor([8.0, -6.0, 2.0]) + torch.randn_like(model.prior.means))
    state = torch.random.get_rng_state()
    z = manifold_latents(model, n=7, span=3.0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the frame's draws leave torch's RNG alone
    torch.testing.assert_close(z, manifold_latents(model, n=7, span=3.0))  # and give the same grid each time
    draws = model.p_z().sample((20_000,))
    low, high = z.min(0).values, z.max(0).values
    for j in (0, 1):
        inside = ((draws[:, j] >= low[j]) & (draws[:, j] <= high[j])).float().mean()
        assert 0.99 <= inside <= 1.0  # the central 99.73%, not [-3, 3] (which holds almost none of z0's mass)
    torch.testing.assert_close(z[:, 2], draws[:, 2].median().expand(49), atol=0.1, rtol=0)  # others: the centre


def test_a_learned_priors_manifold_labels_its_axes_in_z():
    model = small_vae(2, prior="learnable")
    with torch.no_grad():
        model.prior.loc.copy_(torch.tensor([4.0, 0.0]))
    fig = latent_manifold(model, n=7, span=3.0)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "1.0" and labels[-1] == "7.0"
    assert "z[0] ∈ [1.0, 7.0]" in fig.axes[0].get_title()


def test_manifold_latents_fix_extra_dimensions_at_zero():
    z = manifold_latents(small_vae(4), n=3, span=1.0)
    assert z.shape == (9, 4)
    assert torch.all(z[:, 2:] == 0)
    with pytest.raises(VaelabError):
        manifold_latents(small_vae(1), n=3)


def test_a_manifold_grids_the_dimensions_asked_for_and_names_them():
    model = small_vae(5)
    z = manifold_latents(model, n=3, span=1.0, dims=(3, 1))
    values = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(z[:, 3], values.repeat(3))  # columns
    torch.testing.assert_close(z[:, 1], values.flip(0).repeat_interleave(3))  # rows, top to bottom
    assert torch.all(z[:, [0, 2, 4]] == 0)
    fig = latent_manifold(model, n=3, dims=(3, 1))
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("z[3]", "z[1]")
    assert "two most active of 5 dimensions" in fig.axes[0].get_title()
    plt.close(fig)
    for bad in [(1, 1), (0, 5)]:
        with pytest.raises(VaelabError, match="two different dimensions"):
            manifold_latents(model, n=3, dims=bad)


def test_latent_manifold_decodes_the_mapped_points():
    model = small_vae(2, prior="correlated")
    fig = latent_manifold(model, n=4, span=3.0)
    shown = fig.axes[0].images[0].get_array()
    expected = image_grid(decode_latents(model, manifold_latents(model, 4, 3.0)), nrow=4)
    np.testing.assert_allclose(np.asarray(shown), expected, atol=1e-6)
    standard_grid = image_grid(decode_latents(model, expected_u_grid(4, 3.0)), nrow=4)
    assert not np.allclose(np.asarray(shown), standard_grid)
    assert "L u" in fig.axes[0].get_title()
    plt.close(fig)


def test_cross_section_latents_vary_z2_per_panel():
    model = small_vae(3)
    panels = [cross_section_latents(model, v, n=4, span=2.0) for v in (-1.0, 0.0, 1.0)]
    for value, z in zip((-1.0, 0.0, 1.0), panels, strict=True):
        assert torch.all(z[:, 2] == value)
        torch.testing.assert_close(z[:, :2], expected_u_grid(4, 2.0))
    fig = manifold_cross_sections(model, values=(-1.0, 0.0, 1.0), n=4, span=2.0)
    shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes]
    assert len(shown) == 3 and not np.allclose(shown[0], shown[2])
    np.testing.assert_allclose(shown[2], image_grid(decode_latents(model, panels[2]), nrow=4), atol=1e-6)
    plt.close(fig)
    with pytest.raises(VaelabError):
        cross_section_latents(small_vae(2), 0.0)


def test_interpolation_runs_between_the_two_posterior_means(data):
    x, _ = data
    model = small_vae(2)
    z = interpolation_latents(model, x[0], x[1], steps=5)
    ends = encode_means(model, x[:2])
    torch.testing.assert_close(z[0], ends[0])
    torch.testing.assert_close(z[-1], ends[1])
    torch.testing.assert_close(z[2], ends.mean(0))
    fig = interpolation(model, x[0], x[1], steps=5)
    grid = np.asarray(fig.axes[0].images[0].get_array())
    assert grid.shape == (28 + 4, 7 * 30 + 2)  # input, 5 steps, input
    np.testing.assert_allclose(grid[2:30, 2:30], x[0, 0].numpy())
    np.testing.assert_allclose(grid[2:30, -30:-2], x[1, 0].numpy())
    plt.close(fig)


# ----------------------------------------------------------------------------- other figures


def test_reconstructions_show_inputs_above_reconstructions(data):
    x, _ = data
    model = small_vae(2)
    model.train()
    fig = reconstructions(model, x, n=4)
    assert model.training  # the model's mode is restored
    top, bottom = (np.asarray(ax.images[0].get_array()) for ax in fig.axes)
    np.testing.assert_allclose(top, image_grid(x[:4], nrow=4))
    np.testing.assert_allclose(bottom, image_grid(model.reconstruct(x[:4]), nrow=4), atol=1e-6)
    plt.close(fig)


def test_prior_samples_are_seeded():
    model = small_vae(2, prior="correlated")

    def shown(seed):
        fig = prior_samples(model, n=9, seed=seed)
        array = np.asarray(fig.axes[0].images[0].get_array())
        plt.close(fig)
        return array

    assert shown(0).shape == (3 * 30 + 2, 3 * 30 + 2)
    np.testing.assert_array_equal(shown(0), shown(0))
    assert not np.array_equal(shown(0), shown(1))


def test_latent_scatter_draws_the_prior_covariance_ellipses():
    means = torch.randn(50, 2)
    labels = torch.arange(50) % 3
    L = torch.linalg.cholesky(torch.tensor([[1.0, 0.8], [0.8, 1.0]]))
    fig = latent_scatter(means, labels, class_names=["a", "b", "c"], prior_scale_tril=L)
    ax = fig.axes[0]
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2
    for k, e in zip((1, 2), ellipses, strict=True):  # eigenvalues 1.8 and 0.2, major axis at 45°
        assert e.width == pytest.approx(2 * k * math.sqrt(1.8), rel=1e-5)
        assert e.height == pytest.approx(2 * k * math.sqrt(0.2), rel=1e-5)
        assert e.angle % 180 == pytest.approx(45.0, abs=1e-4)
    legend_texts = {t.get_text() for legend in ax.findobj(plt.matplotlib.legend.Legend) for t in legend.texts}
    assert {"a", "b", "c"} <= legend_texts
    plt.close(fig)
    fig = latent_scatter(means, labels)  # standard prior: unit circles
    circles = [p for p in fig.axes[0].patches if isinstance(p, Ellipse)]
    assert [(c.width, c.height) for c in circles] == [(2.0, 2.0), (4.0, 4.0)]
    plt.close(fig)
    with pytest.raises(VaelabError):
        latent_scatter(means, labels[:10])


def test_pairwise_projections_has_three_panels():
    fig = pairwise_projections(torch.randn(30, 3), torch.arange(30) % 4)
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    assert labels == [("z[0]", "z[1]"), ("z[1]", "z[2]"), ("z[0]", "z[2]")]
    plt.close(fig)


def test_loss_curves_plot_train_validation_and_test_marker():
    records = [
        {"epoch": e, "split": s, "total": 100.0 - e, "reconstruction": 90.0 - e, "kl": 10.0}
        for e in (1, 2, 3)
        for s in ("train", "validation")
    ] + [{"epoch": 3, "split": "test", "total": 96.5, "reconstruction": 86.0, "kl": 10.5}]
    fig = loss_curves(records)
    assert [ax.get_title() for ax in fig.axes] == ["total (negative ELBO)", "reconstruction", "KL"]
    train, validation, test = fig.axes[0].lines
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [99.0, 98.0, 97.0]
    assert list(test.get_xdata()) == [3] and list(test.get_ydata()) == [96.5]
    assert list(fig.axes[2].lines[2].get_ydata()) == [10.5]
    plt.close(fig)
    with pytest.raises(VaelabError):
        loss_curves([])


# ------------------------------------------------------------------------------------ files


def test_save_figure_writes_png_without_pyplot(tmp_path):
    fig = latent_scatter(np.zeros((4, 2)), np.arange(4))
    path = save_figure(fig, tmp_path / "sub" / "f.png")
    assert_png(path)
    assert plt.get_fignums() == []  # figures are built without pyplot's global registry
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    ("latent_dim", "prior", "arch", "expected"),
    [
        (2, "standard", "conv", {"latent_manifold.png", "latent_scatter.png"}),
        (2, "correlated", "mlp", {"latent_manifold.png", "latent_scatter.png"}),
        (3, "standard", "mlp", {"latent_scatter_3d.png", "latent_projections.png", "manifold_cross_sections.png"}),
        (5, "standard", "mlp", {"latent_manifold.png", "latent_traversals.png", "latent_pca.png"}),
    ],
)
def test_write_run_figures(tmp_path, data, latent_dim, prior, arch, expected):
    x, y = data
    records = [{"epoch": 1, "split": "train", "total": 1.0, "reconstruction": 0.5, "kl": 0.5}]
    model = small_vae(latent_dim, prior=prior, arch=arch)
    paths = write_run_figures(model, tmp_path / "figures", records, x, y, class_names=[str(i) for i in range(10)])
    common = {"loss_curves.png", "reconstructions.png", "samples.png", "interpolation.png"}
    assert {p.name for p in paths} == common | expected
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(p.name for p in paths)
    for path in paths:
        assert_png(path)
    assert plt.get_fignums() == []


def test_write_run_figures_without_records_or_labels(tmp_path, data):
    x, _ = data
    paths = write_run_figures(small_vae(2), tmp_path, [], x, None)
    assert {p.name for p in paths} == {"reconstructions.png", "samples.png", "interpolation.png", "latent_manifold.png"}


def test_interpolation_pair_has_different_classes():
    from vaelab.viz.figures import _two_of_different_classes

    assert _two_of_different_classes(np.array([3, 3, 3, 7, 1]), 5) == (0, 3)
    assert _two_of_different_classes(np.array([2, 2]), 2) == (0, 1)  # no other class: any two
    assert _two_of_different_classes(None, 1) == (0, 0)


def test_scatter_draws_a_learned_prior_where_it_is():
    """A learned Gaussian prior's ellipses sit at its mean; a mixture's density contours are drawn, not N(0, I)'s circles."""
    from vaelab.viz.figures import _prior_drawing

    model = small_vae(2, "learnable")
    with torch.no_grad():
        model.prior.loc.copy_(torch.tensor([2.0, -1.0]))
        model.prior.log_scale.copy_(torch.tensor([0.0, math.log(0.5)]))
    means, labels = torch.randn(40, 2), torch.arange(40) % 4
    fig = latent_scatter(means, labels, **_prior_drawing(model))
    ellipses = [p for p in fig.axes[0].patches if isinstance(p, Ellipse)]
    assert [e.center for e in ellipses] == [(2.0, -1.0), (2.0, -1.0)]
    assert ellipses[0].width == pytest.approx(2.0) and ellipses[0].height == pytest.approx(1.0)
    assert "learned Gaussian prior" in fig.axes[0].get_title()
    plt.close(fig)

    model = small_vae(2, "mog")
    fig = latent_scatter(means, labels, **_prior_drawing(model))
    ax = fig.axes[0]
    assert not [p for p in ax.patches if isinstance(p, Ellipse)]  # no N(0, I) circles
    assert ax.collections[-1].get_paths() or ax.collections[-1].allsegs  # the density's contour lines
    assert "density contours" in ax.get_title()
    plt.close(fig)
    fig = pairwise_projections(torch.randn(30, 3), torch.arange(30) % 4, **_prior_drawing(small_vae(3, "mog")))
    assert "not Gaussian" in fig._suptitle.get_text()
    assert not [p for ax in fig.axes for p in ax.patches if isinstance(p, Ellipse)]
    plt.close(fig)


# ------------------------------------------------------------------ formats, 3-D views, more dimensions


@pytest.mark.parametrize(("kind", "magic"), [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_write_run_figures_in_the_format_asked(tmp_path, data, kind, magic):
    x, y = data
    paths = write_run_figures(small_vae(2), tmp_path, [], x, y, figure_format=FigureFormat(kind, 60))
    assert {p.suffix for p in paths} == {"." + kind} and len(paths) == 5
    assert all(p.read_bytes().startswith(magic) for p in paths)


def test_the_dpi_sets_a_png_figures_size(tmp_path, data):
    x, y = data
    sizes = {}
    for dpi in (50, 200):
        (path,) = [
            p
            for p in write_run_figures(small_vae(2), tmp_path / str(dpi), [], x, y, figure_format=FigureFormat(dpi=dpi))
            if p.stem == "samples"
        ]
        sizes[dpi] = mpimg.imread(path).shape[:2]
    assert sizes[200][0] == pytest.approx(4 * sizes[50][0], rel=0.02)


@pytest.mark.parametrize("bad", [("gif", 110), ("png", 5), ("png", 5000), ("png", 1.5)])
def test_a_bad_format_or_dpi_is_refused(bad):
    with pytest.raises(VaelabError, match="figure format|dpi"):
        FigureFormat(*bad)


def test_the_cross_sections_grid_the_two_most_active_dimensions():
    model = small_vae(3)
    assert sweep_axes([0.0004, 0.95, 0.82]) == (1, 2, 0)
    assert sweep_axes([0.9, 0.001, 0.5]) == (0, 2, 1)
    z = cross_section_latents(model, 1.5, n=4, span=2.0, axes=(1, 2, 0))
    torch.testing.assert_close(z[:, [1, 2]], expected_u_grid(4, 2.0))
    assert (z[:, 0] == 1.5).all()
    fig = manifold_cross_sections(model, values=(-1.0, 1.0), n=4, variances=[0.0004, 0.95, 0.82])
    assert [ax.get_title() for ax in fig.axes] == ["z[0] = -1", "z[0] = 1"]
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("z[1]", "z[2]")
    assert "two most active" in fig._suptitle.get_text() and "collapsed" in fig._suptitle.get_text()
    plt.close(fig)


def test_the_3d_scatter_has_equal_axes_so_a_collapsed_dimension_is_flat():
    g = torch.Generator().manual_seed(0)
    means = torch.cat([0.02 * torch.randn(200, 1, generator=g), torch.randn(200, 2, generator=g)], 1)
    fig = latent_scatter_3d(means, torch.arange(200) % 10)
    ax = fig.axes[0]
    spans = [np.ptp(lim) for lim in (ax.get_xlim(), ax.get_ylim(), ax.get_zlim())]
    assert spans == pytest.approx([spans[0]] * 3) and spans[0] > 2
    assert "equal axes" in ax.get_title() and "z0 barely varies" in ax.get_title()
    assert ax.get_xlabel().startswith("z[0] (sd 0.0")
    plt.close(fig)


def test_traversals_move_one_dimension_per_row_most_active_first():
    model = small_vae(5)
    means = torch.zeros(50, 5)
    means[:, 3] = torch.linspace(-2, 2, 50)
    means[:, 1] = torch.linspace(-1, 1, 50)
    fig = latent_traversals(model, means, steps=3, span=2.0, max_rows=2)
    ax = fig.axes[0]
    assert [label.get_text().split()[0] for label in ax.get_yticklabels()] == ["z[3]", "z[1]"]
    assert "2 most active of 5" in ax.get_title()
    rows = image_grid(
        decode_latents(model, torch.tensor([[0, 0, 0, -2.0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 2.0, 0]])), nrow=3
    )
    np.testing.assert_allclose(ax.images[0].get_array()[: rows.shape[0]], rows, atol=1e-6)
    plt.close(fig)


def test_the_pca_view_projects_the_means_on_their_main_directions():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(300, 6, generator=g) * torch.tensor([0.01, 3.0, 0.01, 1.0, 0.01, 0.01])
    fig = latent_pca(means, torch.arange(300) % 3)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("principal component 1 (9") and "component 2" in ax.get_ylabel()
    xs = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections])
    assert np.std(xs) == pytest.approx(means[:, 1].std().item(), rel=0.05)
    plt.close(fig)


def test_a_one_epoch_loss_plot_shows_the_validation_point_beside_the_test_star():
    records = [
        {"epoch": 1, "split": s, "total": v, "reconstruction": v - 5, "kl": 5.0}
        for s, v in (("train", 160.0), ("validation", 155.0), ("test", 155.0))
    ]
    fig = loss_curves(records)
    _, validation, test = fig.axes[0].lines
    assert validation.get_marker() == "o" and validation.get_zorder() > test.get_zorder()
    assert test.get_markerfacecolor() == "none"
    assert list(fig.axes[0].get_xticks()) == [1]
    plt.close(fig)


def test_a_report_links_a_pdf_figure_and_shows_the_others():
    from vaelab.io import markdown_figure

    assert markdown_figure("samples", "figures/samples.png") == "![samples](figures/samples.png)"
    assert markdown_figure("samples", "figures/samples.svg") == "![samples](figures/samples.svg)"
    assert markdown_figure("samples", "figures/samples.pdf") == "[samples (PDF)](figures/samples.pdf)"
