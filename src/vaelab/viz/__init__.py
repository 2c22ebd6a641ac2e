"""Figures: manifolds, latent scatters, loss curves, samples, reconstructions (matplotlib, Agg).

``viz`` draws; it never trains. It imports only from model, distributions, data, config, io, errors.
"""

from vaelab.viz.dimensions import latent_pca, latent_traversals
from vaelab.viz.figures import (
    FORMATS,
    FigureFormat,
    cross_section_latents,
    decode_latents,
    encode_means,
    interpolation,
    interpolation_latents,
    latent_manifold,
    latent_scatter,
    latent_scatter_3d,
    loss_curves,
    manifold_cross_sections,
    manifold_latents,
    metrics_against_minutes,
    nll_against_minutes,
    pairwise_projections,
    prior_samples,
    reconstructions,
    save_figure,
    sweep_axes,
    write_run_figures,
)
from vaelab.viz.grid import image_grid, save_image_grid, tile_origin

__all__ = [
    "FORMATS",
    "FigureFormat",
    "cross_section_latents",
    "decode_latents",
    "encode_means",
    "image_grid",
    "interpolation",
    "interpolation_latents",
    "latent_manifold",
    "latent_pca",
    "latent_scatter",
    "latent_scatter_3d",
    "latent_traversals",
    "loss_curves",
    "manifold_cross_sections",
    "manifold_latents",
    "metrics_against_minutes",
    "nll_against_minutes",
    "pairwise_projections",
    "prior_samples",
    "reconstructions",
    "save_figure",
    "save_image_grid",
    "sweep_axes",
    "tile_origin",
    "write_run_figures",
]
