"""``vaelab eval --disentanglement`` end to end: a VAE trained on dsprites-small through ``vaelab train``,
its five metrics as JSON, the record, the report section and the figures; the refusals in one line;
and the glue checked with a hand-made encoder whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import in_process_cli as vaelab
from tests.conftest import set_args, tiny_config
from vaelab.cli.app import DEFAULT_POINTS
from vaelab.data import load_dataset
from vaelab.eval import disentanglement as D
from vaelab.eval.factor_eval import evaluate_disentanglement, normalised_information
from vaelab.model import load_model
from vaelab.model.base import LatentVariableModel
from vaelab.train import Trainer
from vaelab.viz.disentanglement import factor_of_dimension, write_disentanglement_figures

TINY_DSPRITES = [
    "data.name='dsprites-small'",
    "data.train_limit=2000",
    "data.validation_size=500",
    "data.test_limit=200",
    "model.arch=mlp",
    "model.hidden=[64]",
    "model.latent_dim=4",
    "train.batch_size=64",
    "train.eval_batch_size=200",
    "train.epochs=3",  # 96 steps
    "train.threads=1",
]


@pytest.fixture(scope="module")
def dsprites_run(run_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dsprites"
    result = run_cli("train", "--out", out, "--no-figures", *set_args(TINY_DSPRITES), timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_eval_disentanglement_gives_the_five_metrics_and_writes_them(monkeypatch, capsys, dsprites_run):
    result = vaelab(monkeypatch, capsys, "eval", dsprites_run, "--disentanglement", "--json", "--metric-points", 60)
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout)
    for key in D.METRICS:
        assert 0.0 <= numbers[key] <= 1.0, key
    assert numbers["dataset"] == "dsprites-small" and numbers["latent_dim"] == 4
    assert numbers["factors"] == ["shape", "scale", "orientation", "position_x", "position_y"]
    assert numbers["metric_sizes"]["points_train"] == 60 and numbers["metric_sizes"]["codes_train"] == 10_000
    assert np.asarray(numbers["mutual_information"]).shape == (4, 5)
    records = [json.loads(line) for line in (dsprites_run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "disentanglement" and records[-1]["split"] == "factors"
    assert records[-1]["mig"] == numbers["mig"]
    for name in ("latent_traversals.png", "factor_latent_mi.png", "reconstructions.png"):
        assert (dsprites_run / "figures" / name).stat().st_size > 1000
    report = (dsprites_run / "report.md").read_text()
    assert report.count("## Disentanglement") == 1 and "FactorVAE score" in report
    # again, as text: the same numbers (one seed), the section replaced, not repeated
    again = vaelab(monkeypatch, capsys, "eval", dsprites_run, "--disentanglement", "--metric-points", 60)
    assert again.returncode == 0, again.stderr
    assert f"MIG: {numbers['mig']:.3f}" in again.stdout
    assert (dsprites_run / "report.md").read_text().count("## Disentanglement") == 1


def test_plot_draws_the_traversals_of_a_run_with_factors(monkeypatch, capsys, dsprites_run, tmp_path):
    result = vaelab(monkeypatch, capsys, "plot", dsprites_run)
    assert result.returncode == 0, result.stderr
    assert "latent_traversals.png" in result.stdout and "factor_latent_mi.png" in result.stdout
    # in the format asked for, like every other figure
    result = vaelab(monkeypatch, capsys, "plot", dsprites_run, "--out", tmp_path / "svg", "--format", "svg")
    assert result.returncode == 0, result.stderr
    drawn = {p.name for p in (tmp_path / "svg").iterdir()}
    assert {"latent_traversals.svg", "factor_latent_mi.svg"} <= drawn and not any(n.endswith(".png") for n in drawn)


def test_a_resumed_run_keeps_its_disentanglement_record(monkeypatch, capsys, dsprites_run):
    kinds = lambda: [json.loads(line).get("kind") for line in (dsprites_run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert "disentanglement" in kinds()  # from the test above
    result = vaelab(monkeypatch, capsys, "train", "--resume", dsprites_run, "--epochs", 4, "--no-figures")
    assert result.returncode == 0, result.stderr
    assert "disentanglement" in kinds()


def _one_error_line(result, *fragments):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_data_set_without_factors_is_refused_in_one_line(run_cli, monkeypatch, capsys, trained_run):
    _one_error_line(run_cli("eval", trained_run, "--disentanglement"), "'mnist' has no ground-truth factors")
    result = vaelab(monkeypatch, capsys, "eval", "--pretrained", "seed-2d", "--disentanglement", "--json")
    _one_error_line(result, "no ground-truth")
    assert "## Disentanglement" not in (trained_run / "report.md").read_text()


def test_options_that_do_not_go_together_are_refused(monkeypatch, capsys, trained_run):
    for args, fragment in [
        (("--disentanglement", "--nll"), "--nll"),
        (("--metric-points", 50), "--disentanglement"),
        (("--disentanglement", "--metric-points", 1), "--metric-points"),
        (("--format", "svg"), "--format and --dpi go with --disentanglement"),
    ]:
        _one_error_line(vaelab(monkeypatch, capsys, "eval", trained_run, *args), fragment)
    assert DEFAULT_POINTS == D.DEFAULT_POINTS


class Centroid(LatentVariableModel):
    """A hand-made "encoder": a sprite's centre of mass (x, y) and its area. No decoder."""

    family = "centroid"
    latent_dim = 3
    image_shape = (1, 64, 64)

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # where the model lives (the CPU)

    def encode(self, x):
        mass = x.sum(dim=(1, 2, 3))
        grid = torch.arange(64, dtype=x.dtype)
        cx = (x.sum(dim=(1, 2)) * grid).sum(-1) / mass
        cy = (x.sum(dim=(1, 3)) * grid).sum(-1) / mass
        return torch.stack([cx, cy, mass], dim=1)


def test_the_metrics_see_codes_and_factors_in_step():
    """Position x and y each in one dimension of the centroid code: MIG near 1 for them (0 if the codes were
    matched to the wrong factors), the area holds scale (with shape) and nothing holds orientation."""
    dataset = load_dataset("dsprites-small")
    sizes = D.Sizes(1000, 500, 200, 100, 100, 50, 1000)
    result = evaluate_disentanglement(Centroid(), dataset, seed=0, sizes=sizes)
    per_factor = dict(zip(result["factors"], result["mig_per_factor"]))
    assert per_factor["position_x"] > 0.8 and per_factor["position_y"] > 0.8
    assert per_factor["orientation"] < 0.1
    information = normalised_information(Centroid(), dataset, n=2000)
    assert factor_of_dimension(information, result["factors"])[:2] == [
        f"position_x ({information[0, 3]:.2f})",
        f"position_y ({information[1, 4]:.2f})",
    ]
    assert np.argmax(information[2]) == 1  # the area: scale


def test_the_figures_name_each_row_after_its_factor(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config("data.name='dsprites-small'", "train.epochs=1"), run, figures=False).fit(progress=False)
    vae, _, _ = load_model(run)
    dataset = load_dataset("dsprites-small")
    information = np.zeros((vae.latent_dim, 5))
    information[0, 3] = 0.9
    paths = write_disentanglement_figures(vae, tmp_path / "figures", dataset.x_test[:3], information, ["a"] * 5)
    assert [p.name for p in paths] == ["latent_traversals.png", "factor_latent_mi.png", "reconstructions.png"]
    assert factor_of_dimension(information, ["a", "b", "c", "x", "y"])[:2] == ["x (0.90)", "no factor"]
