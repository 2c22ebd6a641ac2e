"""``vaelab bench --families``: the plain PyTorch references compute vaelab's loss (same weights, same
noise, same images, the row's objective), they train, the hierarchy rows are the burda-*-2l models, and
a run within a tiny budget gives a row per family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.bench import families as bench_families
from vaelab.bench import reference_families as plain
from vaelab.bench.suite import Plan
from vaelab.data import load_dataset
from vaelab.experiments import EXPERIMENTS
from vaelab.model import IWAE, build_model, build_objective
from vaelab.model.base import Context

FAMILIES = bench_families.FAMILIES


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if type(m) is nn.Linear]


def _copy_vaelab_weights(model, reference: plain.PlainVAE) -> None:
    """Give the plain model vaelab's weights: the MLPs layer by layer, then the family's own parameters."""
    networks = [(model.encoder, reference.encoder), (model.decoder, reference.decoder)]
    if isinstance(reference, plain.TwoLayerVAE):
        networks += [(model.up, reference.up), (model.down, reference.down)]
    with torch.no_grad():
        for ours, theirs in networks:
            pairs = list(zip(_linears(ours), _linears(theirs), strict=True))
            for a, b in pairs:
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
        if isinstance(reference, plain.IAF):
            for step, made in zip(model.posterior.steps, reference.flow, strict=True):
                ours = step.made
                layers = [(ours.input, made.fc_in, made.mask_in), (ours.hidden, made.fc_hidden, made.mask_hidden)]
                for a, b, mask in [*layers, (ours.output, made.fc_out, made.mask_out)]:
                    assert torch.equal(a.mask, mask)  # the same autoregressive ordering on both sides
                    b.weight.copy_(a.weight)
                    b.bias.copy_(a.bias)
                made.fc_context.weight.copy_(ours.context.weight)
        elif isinstance(reference, plain.MixturePrior):
            reference.logits.copy_(model.prior.logits)
            reference.means.copy_(model.prior.means)
            reference.log_scales.copy_(model.prior.log_scales)
        elif isinstance(reference, plain.VampPrior):
            reference.pseudo_logits.copy_(model.prior.pseudo_logits)
        elif isinstance(reference, plain.LearnablePrior):
            reference.prior_loc.copy_(torch.randn(plain.D) * 0.3)
            reference.prior_log_scale.copy_(torch.randn(plain.D) * 0.3)
            model.prior.loc.copy_(reference.prior_loc)
            model.prior.log_scale.copy_(reference.prior_log_scale)
        elif isinstance(reference, plain.LearnedScaleGaussian):
            reference.log_scale.copy_(model.likelihood.log_scale.flatten())


@pytest.fixture(scope="module")
def images():
    return load_dataset("mnist").x_train[:256]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_plain_reference_computes_vaelabs_loss(name, images):
    family = FAMILIES[name]
    torch.manual_seed(0)
    model = build_model(family.config, (1, 28, 28))
    reference = family.make_plain()
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in model.parameters())
    _copy_vaelab_weights(model, reference)
    x = images[:32].float() / 255
    if family.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(2)  # both draw their one batch of posterior noise first, with torch's global RNG
        ours = build_objective(family.objective)(model, x, Context()).total
        torch.manual_seed(2)
        theirs = reference.loss(x)
    assert ours.shape == theirs.shape == (32,)
    torch.testing.assert_close(theirs, ours, rtol=2e-5, atol=1e-3)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_plain_loop_trains(name, images):
    family = FAMILIES[name]
    torch.manual_seed(0)
    reference = family.make_plain()
    x = images[:64].float() / 255
    if reference.binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = reference.loss(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # and the step the benchmark times runs and counts its images
    step = plain.training_step(reference, images[:256], family.batch_size)
    assert step() == family.batch_size


@pytest.mark.parametrize(
    ("name", "experiment"),
    [
        ("hierarchical bottom-up", "burda-vae-2l"),
        ("hierarchical ladder", "burda-vae-2l"),
        ("hierarchical bottom-up iwae-50", "burda-iwae-2l"),
    ],
)
def test_the_hierarchy_rows_are_the_two_layer_experiments_models(name, experiment):
    family, config = FAMILIES[name], EXPERIMENTS[experiment].make_config()
    keys = ("family", "arch", "hidden", "activation", "latent_dim", "stochastic_layers", "layer_hidden", "likelihood")
    assert {k: getattr(family.config, k) for k in keys} == {k: getattr(config.model, k) for k in keys}
    assert family.config.inference == ("ladder" if "ladder" in name else config.model.inference)
    assert (family.objective.name, family.objective.k) == (config.objective.name, config.objective.k)
    if family.objective.name == "iwae":  # k = 50 at batch 128 would leave a --quick window a step or less
        assert family.batch_size == config.train.batch_size == 50
    assert family.binarize == config.data.binarize == "dynamic"


def test_the_iwae_row_times_both_sides_on_its_bound_and_batch(monkeypatch, images):
    family, objectives = FAMILIES["hierarchical bottom-up iwae-50"], []
    vaelab_train_step = bench_families.vaelab_train_step

    def spy(config, **keys):
        objectives.append(keys["objective"])
        return vaelab_train_step(config, **keys)

    monkeypatch.setattr(bench_families, "vaelab_train_step", spy)
    assert bench_families.vaelab_family_step(family, images)() == 50
    assert isinstance(objectives[0], IWAE) and objectives[0].k == 50
    assert bench_families.plain_family_step(family, images)() == 50


def test_a_run_within_a_tiny_budget_gives_a_row_per_family():
    tiny = Plan(budget=60.0, window=0.02, windows=2, peak=0.0, nll=0.0, compile=False, memory=False)
    progress = _Quiet()
    results = bench_families.run(threads=1, progress=progress, plan=tiny)
    assert list(results["families"]) == list(FAMILIES)
    for row in results["families"].values():
        assert row["images_per_second"] > 0 and row["reference_images_per_second"] > 0
        assert row["speedup_vs_reference"] == row["images_per_second"] / row["reference_images_per_second"]
    table = bench_families.markdown(results)
    assert table.count("\n| ") == len(FAMILIES) + 1  # the header and a row per family
    assert "| vamp | prior | binarised |" in table and "| logistic-mixture | likelihood | 8-bit levels |" in table
    assert "| hierarchical ladder | hierarchy | binarised |" in table
    iwae = results["families"]["hierarchical bottom-up iwae-50"]
    assert iwae["objective"] == {"name": "iwae", "k": 50} and iwae["batch_size"] == 50
    assert iwae["model"]["family"] == "hierarchical" and iwae["model"]["stochastic_layers"] == [100, 50]
    assert results["families"]["hierarchical ladder"]["model"]["inference"] == "ladder"
    assert results["families"]["mog"]["objective"] == {"name": "elbo", "k": 1}
    assert "hierarchical bottom-up iwae-50: iwae, k = 50, batch 50" in table.splitlines()[0]


def test_what_does_not_fit_the_budget_is_skipped_on_both_sides():
    tiny = Plan(budget=1.0, window=0.02, windows=2, peak=0.0, nll=0.0, compile=False, memory=False)
    results = bench_families.run(threads=1, progress=_Quiet(), plan=tiny)
    assert results["families"] == {}
    assert set(results["skipped"]) == set(FAMILIES)
    assert "- skipped: iaf: would not fit in the 1 s time budget" in bench_families.markdown(results)


def test_the_two_sides_windows_alternate_after_a_warm_up_each():
    calls: list[str] = []

    def step_of(name: str):
        def step() -> int:
            calls.append(name)
            return 128

        return step

    rates = bench_families.alternating_rates([step_of("vaelab"), step_of("plain")], window=0.0, windows=3)
    assert len(rates) == 2 and min(rates) > 0
    # two warm-up steps each, then one step per window (a window of 0 s), the order reversed every round
    assert calls == ["vaelab"] * 2 + ["plain"] * 2 + ["vaelab", "plain", "plain", "vaelab", "vaelab", "plain"]


class _Quiet:
    def __init__(self):
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_the_command_line_refuses_two_benches_at_once_in_one_line(run_cli):
    result = run_cli("bench", "--families", "--latency", timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: --latency and --families are two different benches; give one"]
