"""Figures from the command line in the format and resolution asked: plot, sample (and train and
reproduce, which hand --format and --dpi down the same path, vaelab.viz.FigureFormat)."""

from __future__ import annotations

import shutil

import matplotlib.image as mpimg


def test_plot_writes_svg_figures_at_the_dpi_asked(run_cli, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = run_cli("plot", run, "--format", "svg", "--dpi", "60")
    assert result.returncode == 0, result.stderr
    written = sorted((run / "figures").iterdir())
    assert written and all(p.suffix == ".svg" and p.read_bytes().startswith(b"<?xml") for p in written)
    assert {p.stem for p in written} >= {"loss_curves", "samples", "latent_manifold"}


def test_sample_scales_the_grid_and_writes_pdf(run_cli, tmp_path):
    png = tmp_path / "grid.png"
    result = run_cli("sample", "--pretrained", "seed-2d", "-n", "64", "-o", png)
    assert result.returncode == 0, result.stderr
    assert mpimg.imread(png).shape[:2] == (4 * 242, 4 * 242)  # 8 x 8 digits of 28 px, 2 px apart, 4x by default
    small = tmp_path / "small.png"
    assert run_cli("sample", "--pretrained", "seed-2d", "-n", "64", "--scale", "1", "-o", small).returncode == 0
    assert mpimg.imread(small).shape[:2] == (242, 242)
    pdf = tmp_path / "grid.pdf"
    result = run_cli("sample", "--pretrained", "seed-2d", "--format", "pdf", "-o", pdf)
    assert result.returncode == 0, result.stderr
    assert pdf.read_bytes().startswith(b"%PDF")


def test_a_bad_format_or_dpi_is_one_line_exit_2(run_cli, tmp_path):
    for args in (
        ["plot", "--pretrained", "seed-2d", "--format", "gif", "-o", tmp_path / "f"],
        ["plot", "--pretrained", "seed-2d", "--dpi", "5", "-o", tmp_path / "f"],
        ["sample", "--pretrained", "seed-2d", "--format", "svg", "-o", tmp_path / "s.png"],
        ["sample", "--pretrained", "seed-2d", "-o", tmp_path / "s.gif"],
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:"), result.stderr
    assert not (tmp_path / "f").exists() and not (tmp_path / "s.png").exists()
