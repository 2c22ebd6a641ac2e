"""``vaelab bench --families``: the plain PyTorch references compute vaelab's loss (same weights, same
noise, same images, the row's objective), they train, the hierarchy rows are the burda-*-2l models, the
cvae, gumbel and vqvae rows are their experiments' models with vaelab's gradients (and the VQ-VAE's
codebook update), and a run within a tiny budget gives a row per family."""

from __future__ import annotations

from dataclasses import asdict

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
OWN_NETWORKS = ["cvae", "gumbel", "vqvae"]  # the rows whose families build networks of their own


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if type(m) is nn.Linear]


def _layers(module: nn.Module) -> list[nn.Module]:
    """The dense and conv layers (vaelab's channels-last convs are subclasses of torch's), in order."""
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]


def _paired_layers(model, reference: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """vaelab's layers beside the plain model's, encoder then decoder (a family with networks of its own)."""
    pairs = []
    for ours, theirs in ((model.encoder, reference.encoder), (model.decoder, reference.decoder)):
        pairs += list(zip(_layers(ours), _layers(theirs), strict=True))
    return pairs


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _copy_vaelab_weights(model, reference: nn.Module) -> None:
    """Give the plain model vaelab's weights: the MLPs layer by layer, then the family's own parameters."""
    if not isinstance(reference, plain.PlainVAE):
        with torch.no_grad():
            for a, b in _paired_layers(model, reference):
                assert type(b) in type(a).__mro__ and a.weight.shape == b.weight.shape
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
            if isinstance(reference, plain.VQVAE):
                reference.codebook.copy_(model.quantizer.codebook)
                reference.ema_count.copy_(model.quantizer.counts)
                reference.ema_sum.copy_(model.quantizer.sums)
        return
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
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def images(mnist):
    return mnist.x_train[:256]


@pytest.fixture(scope="module")
def labels(mnist):
    return mnist.y_train[:256]


def _both_models(family):
    """vaelab's model of the row, set up as the bench sets it up, and the plain one with its weights."""
    torch.manual_seed(0)
    model = build_model(family.config, (1, 28, 28))
    if family.prepare is not None:
        family.prepare(model)
    reference = family.make_plain()
    _copy_vaelab_weights(model, reference)
    return model, reference


def _batch(family, images, labels, n: int = 32):
    x = images[:n].float() / 255
    if family.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(1))
    return x, (labels[:n] if family.labelled else None)


def _plain_loss(reference, x, y):
    return reference.loss(x, y) if reference.labelled else reference.loss(x)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_plain_reference_computes_vaelabs_loss(name, images, labels):
    family = FAMILIES[name]
    model, reference = _both_models(family)
    # the parameters the row trains (the VQ-VAE's prior, the stage the row leaves out, is frozen in vaelab's)
    assert _trainable(reference) == _trainable(model) == sum(p.numel() for p in reference.parameters())
    x, y = _batch(family, images, labels)
    with torch.no_grad():
        torch.manual_seed(2)  # both draw their one batch of posterior noise first, with torch's global RNG
        terms = build_objective(family.objective)(model, x, Context(labels=y))
        torch.manual_seed(2)
        theirs = _plain_loss(reference, x, y)
    ours = terms.total
    if "commitment" in terms.extra:  # the VQ-VAE minimises its commitment term beside the bound
        ours = ours + model.commitment * terms.extra["commitment"]
    assert ours.shape == theirs.shape == (32,)
    torch.testing.assert_close(theirs, ours, rtol=2e-5, atol=1e-3)
    torch.testing.assert_close(theirs.mean(), terms.loss, rtol=2e-5, atol=1e-3)  # what each side minimises


@pytest.mark.parametrize("name", OWN_NETWORKS)
def test_the_plain_reference_computes_vaelabs_gradients_and_codebook_update(name, images, labels):
    family = FAMILIES[name]
    model, reference = _both_models(family)
    if name == "gumbel":  # the relaxation at the plain loop's fixed temperature, as the bench runs it
        assert model.temperature == plain.TEMPERATURE
    if name == "vqvae":
        before = model.quantizer.codebook.clone()
    x, y = _batch(family, images, labels)
    torch.manual_seed(2)
    terms = build_objective(family.objective)(model, x, Context(labels=y))
    terms.loss.backward()
    torch.manual_seed(2)
    theirs = _plain_loss(reference, x, y).mean()
    theirs.backward()
    torch.testing.assert_close(theirs, terms.loss, rtol=2e-5, atol=1e-3)
    for a, b in _paired_layers(model, reference):
        scale = a.weight.grad.abs().max()
        torch.testing.assert_close(b.weight.grad, a.weight.grad, rtol=1e-3, atol=1e-4 * scale)
        torch.testing.assert_close(b.bias.grad, a.bias.grad, rtol=1e-3, atol=1e-4 * scale)
    if name == "vqvae":  # the training step's forward moved the codebook alike on both sides
        q = model.quantizer
        torch.testing.assert_close(reference.ema_count, q.counts)
        torch.testing.assert_close(reference.ema_sum, q.sums)
        torch.testing.assert_close(reference.codebook, q.codebook)
        restarted, used = q.counts == 1.0, q.counts > 1.0  # the unused codes fell to 0.99 < 1: restarted
        assert restarted.any() and used.any() and not torch.equal(q.codebook, before)


@pytest.mark.parametrize(
    ("name", "experiment"), [("cvae", "cvae-2d"), ("gumbel", "gumbel-2d"), ("vqvae", "vqvae-mnist")]
)
def test_the_own_network_rows_are_their_experiments_models(name, experiment):
    family, config = FAMILIES[name], EXPERIMENTS[experiment].make_config()
    expected = asdict(config.model)
    if name == "vqvae":  # the row is the first stage only: no prior stage follows it
        assert family.config.prior_epochs == 0 and expected["prior_epochs"] > 0
        expected["prior_epochs"] = 0
    assert asdict(family.config) == expected
    assert family.batch_size == config.train.batch_size == 128
    assert family.binarize == config.data.binarize
    assert family.labelled == (name == "cvae")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_plain_loop_trains(name, images, labels):
    family = FAMILIES[name]
    torch.manual_seed(0)
    reference = family.make_plain()
    x = images[:64].float() / 255
    if reference.binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = _plain_loss(reference, x, labels[:64] if reference.labelled else None).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # and the step the benchmark times runs and counts its images
    step = plain.training_step(reference, images[:256], family.batch_size, labels[:256])
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
    assert "| cvae | conditional | grey levels + labels |" in table
    assert "| gumbel | discrete | grey levels |" in table and "| vqvae | discrete | binarised |" in table
    assert "- vqvae: vqvae-mnist's first stage" in table and "prior's stage is left out of the row" in table
    assert results["families"]["gumbel"]["model"] == {
        "family": "gumbel",
        "arch": "dense",
        "latent_dim": 2,
        "classes": 10,
        "posterior": "diagonal",
        "prior": "standard",
        "likelihood": "bernoulli",
    }
    assert results["families"]["mog"]["description"] == ""


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
