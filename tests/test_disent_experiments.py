"""`vaelab reproduce disent-btcvae` end to end on a sliver of dsprites-small: the five disentanglement metrics
reach results.json, the run's record and report; seeds get their own run directories, and the group table
spreads the metrics over the seed runs it finds. (One run: DCI's trees are most of its seconds.)"""

from __future__ import annotations

import json

import pytest

import vaelab.experiments.reproduce as reproduce_module
from vaelab.config import apply_overrides
from vaelab.eval.disentanglement import METRICS, Sizes
from vaelab.experiments import DISENT_BATCH, EXPERIMENTS, GROUPS
from vaelab.experiments.reproduce import group_report, reproduce, run_experiment, run_name, seed_runs

QUICK = [
    "data.name=dsprites-small",
    "data.train_limit=128",
    "data.validation_size=64",
    "data.test_limit=64",
    "train.threads=1",
    "train.compile=false",  # the recipe compiles; minutes of compiling would be most of this test
]
TINY_SIZES = Sizes(300, 150, 100, 50, 30, 20, 300, 8)  # far below the library's: seconds, not minutes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setattr(reproduce_module, "metric_sizes", lambda experiment: TINY_SIZES)
    out = tmp_path_factory.mktemp("disent")
    try:
        first = reproduce("disent-btcvae", out, epochs=1, overrides=QUICK)[0]
        again = run_experiment("disent-btcvae", out, epochs=1, overrides=QUICK)
    finally:
        patch.undo()
    return out, first, again


def test_the_experiments_are_the_papers_models_on_dsprites():
    assert GROUPS["disent"] == ("disent-vae", "disent-betavae", "disent-btcvae", "disent-factorvae")
    configs = {name: EXPERIMENTS[name].config()[0] for name in GROUPS["disent"]}
    assert {EXPERIMENTS[name].version for name in GROUPS["disent"]} == {3}  # version 1's runs stay out of its tables
    assert {EXPERIMENTS[name].precision for name in GROUPS["disent"]} == {"bf16"}
    for config in configs.values():
        assert config.data.name == "dsprites" and config.model.arch == "mlp-tcvae" and config.model.latent_dim == 10
        assert config.model.likelihood == "bernoulli" and config.train.batch_size == DISENT_BATCH
        assert config.train.lr == 1e-3 and config.train.compile
        assert 0 < config.train.minutes <= 60 and config.train.seed == 0
        assert config.train.snapshot_minutes == 15
    assert (configs["disent-vae"].objective.name, configs["disent-vae"].objective.beta) == ("elbo", 1.0)
    assert (configs["disent-betavae"].objective.name, configs["disent-betavae"].objective.beta) == ("elbo", 4.0)
    assert (configs["disent-btcvae"].objective.name, configs["disent-btcvae"].objective.beta) == ("btcvae", 6.0)
    assert configs["disent-factorvae"].model.family == "factorvae"
    assert configs["disent-factorvae"].model.tc_weight == 35.0


def test_results_carry_the_five_metrics(runs):
    out, first, _ = runs
    assert first["run_dir"] == "disent-btcvae" and first["seed"] == 0
    # the precision it trained in: the recipe's bf16 where this CPU has it natively, else fp32
    assert first["precision"] == EXPERIMENTS["disent-btcvae"].config()[0].train.precision
    on_disk = json.loads((out / "disent-btcvae" / "results.json").read_text())
    for result in (first, on_disk):
        scores = result["disentanglement"]
        assert set(METRICS) <= set(scores)
        assert all(0.0 <= scores[key] <= 1.0 for key in METRICS)
        assert scores["metric_sizes"] == dict(vars(TINY_SIZES))
    records = [json.loads(line) for line in (out / "disent-btcvae" / "metrics.jsonl").read_text().splitlines()]
    record = next(r for r in records if r.get("kind") == "disentanglement")
    assert record["mig"] == first["disentanglement"]["mig"]  # the numbers come from the evaluation's record
    assert "## Disentanglement" in (out / "disent-btcvae" / "report.md").read_text()
    assert {"figures/latent_traversals.png", "figures/factor_latent_mi.png"} <= set(first["figures"])


def test_a_seed_gets_its_own_run_and_a_finished_evaluation_is_reused(runs):
    out, first, again = runs
    experiment = EXPERIMENTS["disent-btcvae"]
    recipe = experiment.config()[0]
    assert run_name(experiment, recipe) == "disent-btcvae"
    assert run_name(experiment, apply_overrides(recipe, ["train.seed=1"])) == "disent-btcvae-seed1"
    assert first["modified"]  # the quick overrides
    assert again["disentanglement"] == first["disentanglement"]
    records = (out / "disent-btcvae" / "metrics.jsonl").read_text().splitlines()
    assert sum('"disentanglement"' in line for line in records) == 1  # not evaluated again


def test_the_group_table_spreads_the_metrics_over_the_seeds_found(runs):
    out, first, _ = runs
    second = json.loads((out / "disent-btcvae" / "results.json").read_text())  # a second seed's run, as written
    second.update(seed=1, run_dir="disent-btcvae-seed1")
    second["disentanglement"]["mig"] = first["disentanglement"]["mig"] + 0.1
    (out / "disent-btcvae-seed1").mkdir()
    (out / "disent-btcvae-seed1" / "results.json").write_text(json.dumps(second))
    (out / "disent-btcvae-old").mkdir()  # not a seed run of it: left out
    (out / "disent-btcvae-old" / "results.json").write_text(json.dumps(second))
    found = seed_runs(out, ("disent-btcvae",))
    assert [r["seed"] for r in found] == [0, 1]
    report = group_report("disent", [first], found)
    row = next(line for line in report.splitlines() if line.startswith("| disent-btcvae |"))
    migs = [first["disentanglement"]["mig"], second["disentanglement"]["mig"]]
    mean, sd = sum(migs) / 2, abs(migs[0] - migs[1]) / 2**0.5
    assert "| 0, 1 |" in row and f"{mean:.3f} ± {sd:.3f}" in row
    assert "Locatello et al. 2019" in report
