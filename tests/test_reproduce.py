"""`vaelab reproduce seed` end to end on a tiny slice of MNIST (1 epoch): runs, figures, report, reuse."""

from __future__ import annotations

import json
import statistics

import pytest

from vaelab import pretrained
from vaelab.errors import VaelabError
from vaelab.experiments.reproduce import group_report, reproduce, seed_runs

QUICK = ["data.train_limit=600", "data.validation_size=300", "data.test_limit=300", "train.threads=1"]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    return out, reproduce("seed", out, epochs=1, overrides=QUICK)


def test_three_runs_with_their_figures(reproduced):
    out, results = reproduced
    assert [r["experiment"] for r in results] == ["seed-2d", "seed-3d", "seed-correlated"]
    figures = {
        name: {p.name for p in (out / name / "figures").iterdir()} for name in ("seed-2d", "seed-3d", "seed-correlated")
    }
    common = {"loss_curves.png", "reconstructions.png", "samples.png", "interpolation.png"}
    assert common | {"latent_manifold.png", "latent_scatter.png"} <= figures["seed-2d"]
    assert (
        common | {"latent_scatter_3d.png", "latent_projections.png", "manifold_cross_sections.png"}
        <= figures["seed-3d"]
    )
    assert common | {"latent_manifold.png", "latent_scatter.png"} <= figures["seed-correlated"]


def test_report_puts_the_study_beside_our_numbers(reproduced):
    out, results = reproduced
    report = (out / "report.md").read_text()
    for r in results:
        row = next(line for line in report.splitlines() if line.startswith(f"| {r['experiment']} |"))
        assert f"**{r['test']['total']:.2f}**" in row
        assert f"~{r['published']['total']:.0f}" in row
        assert f"{r['analysis']['active_units']}/" in row
    assert "changed the published config" in report  # the quick settings are flagged
    assert "best configuration is" in report
    assert json.loads((out / "results.json").read_text())[0]["experiment"] == "seed-2d"
    # paths relative to the folder of runs: no absolute path of this machine
    assert [r["run_dir"] for r in json.loads((out / "results.json").read_text())] == [r["experiment"] for r in results]
    assert json.loads((out / "seed-3d" / "results.json").read_text())["run_dir"] == "seed-3d"


def test_numbers_come_from_the_runs(reproduced):
    out, results = reproduced
    for r in results:
        records = [json.loads(line) for line in (out / r["experiment"] / "metrics.jsonl").read_text().splitlines()]
        test = [rec for rec in records if rec["split"] == "test"][-1]
        assert r["test"]["total"] == test["total"]
        assert 0.0 <= r["analysis"]["knn5_accuracy"] <= 1.0


def test_a_finished_run_is_reused_and_a_different_config_refused(reproduced):
    out, _ = reproduced
    weights = out / "seed-2d" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = reproduce("seed-2d", out, epochs=1, overrides=QUICK)
    assert weights.stat().st_mtime_ns == before  # not retrained
    assert again[0]["test"]["total"] == reproduced[1][0]["test"]["total"]
    with pytest.raises(VaelabError, match="different config"):
        reproduce("seed-2d", out, epochs=2, overrides=QUICK)


def test_unknown_experiment():
    with pytest.raises(VaelabError, match="unknown experiment"):
        reproduce("seed-4d", "unused")


def test_burda_schedule_stages_and_rates():
    from vaelab.train.schedule import burda_stage, learning_rate

    stages = [burda_stage(e, 3280) for e in range(3280)]
    assert [stages.count(i) for i in range(8)] == [3**i for i in range(8)]  # the paper's 1, 3, 9, ... 2187 epochs
    assert learning_rate("burda", 1e-3, 0, 3280) == 1e-3
    assert abs(learning_rate("burda", 1e-3, 3279, 3280) - 1e-4) < 1e-12
    assert learning_rate("constant", 1e-3, 3279, 3280) == 1e-3
    compressed = [burda_stage(e, 1100) for e in range(1100)]
    assert compressed == sorted(compressed) and compressed[-1] == 7


def test_even_burda_schedule_gives_each_rate_an_equal_share():
    from vaelab.train.schedule import learning_rate

    rates = [learning_rate("burda-even", 1e-3, e, 160) for e in range(160)]
    assert [rates.count(r) for r in dict.fromkeys(rates)] == [20] * 8
    assert rates[0] == 1e-3 and abs(rates[-1] - 1e-4) < 1e-12 and rates == sorted(rates, reverse=True)


def test_burda_reproduction_reports_the_nll_beside_the_paper(tmp_path):
    results = reproduce("burda-vae", tmp_path, epochs=2, overrides=["data.train_limit=500", "data.test_limit=5"])
    test = results[0]["test"]
    assert test["k"] == 5000 and 0 < test["nll"] <= test["total"] + 1.0  # log p(x) >= ELBO, up to noise
    records = [json.loads(line) for line in (tmp_path / "burda-vae" / "metrics.jsonl").read_text().splitlines()]
    # burda-even over 2 epochs: stages 0 and 4 of the 8, from the VAE's sqrt(5)-scaled 2.2e-3
    assert [r["lr"] for r in records if r["split"] == "train"] == pytest.approx([2.2e-3, 2.2e-3 * 10 ** (-4 / 7)])
    report = (tmp_path / "burda-vae" / "report.md").read_text()
    assert "the paper reports 86.76" in report


def test_the_report_spreads_training_mean_and_test_total_over_seeds(reproduced):
    out, results = reproduced
    first = results[0]
    records = [json.loads(line) for line in (out / "seed-2d" / "metrics.jsonl").read_text().splitlines()]
    last_train = [rec for rec in records if rec["split"] == "train"][-1]
    assert first["train_final"]["total"] == last_train["total"]
    second = dict(first, seed=1, run_dir="seed-2d-seed1", train_final={**first["train_final"], "total": 200.0})
    second["test"] = {**first["test"], "total": first["test"]["total"] + 2.0}
    (out / "seed-2d-seed1").mkdir()
    (out / "seed-2d-seed1" / "results.json").write_text(json.dumps(second))
    try:
        found = seed_runs(out, ("seed-2d",))
        report = group_report("seed", results, found)
    finally:
        (out / "seed-2d-seed1" / "results.json").unlink()
        (out / "seed-2d-seed1").rmdir()
    assert [r["seed"] for r in found] == [0, 1] and not any(r["shipped"] for r in found)
    section = report.split("## Over seeds")[1]
    row = next(line for line in section.splitlines() if line.startswith("| seed-2d |"))
    trains, tests = [last_train["total"], 200.0], [first["test"]["total"], first["test"]["total"] + 2.0]
    assert f"{statistics.mean(trains):.2f} ± {statistics.stdev(trains):.2f}" in row
    assert f"{statistics.mean(tests):.2f} ± {statistics.stdev(tests):.2f}" in row
    assert "| 0, 1 |" in row and "~165" in row


def test_the_shipped_model_stands_in_for_the_recipe_seed_not_trained_here(tmp_path):
    found = seed_runs(tmp_path, ("seed-2d",))
    assert len(found) == 1 and found[0]["shipped"] and found[0]["seed"] == 0
    shipped = json.loads((pretrained.path("seed-2d") / "results.json").read_text())
    assert found[0]["test"]["total"] == shipped["test"]["total"]
    # its training mean comes from the shipped metrics.jsonl: the last epoch's training record
    records = [json.loads(line) for line in (pretrained.path("seed-2d") / "metrics.jsonl").read_text().splitlines()]
    assert found[0]["train_final"]["total"] == [r for r in records if r["split"] == "train"][-1]["total"]
