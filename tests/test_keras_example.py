"""`vaelab reproduce keras-example`: Keras' VAE example set up exactly, its losses logged as Keras computes
them (train.keras_log), and the published log set beside ours."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config
from vaelab.experiments import get_experiment
from vaelab.experiments.reproduce import training_log_beside, training_log_section
from vaelab.model.base import Terms
from vaelab.train import Trainer, make_batches


def test_the_experiment_is_the_examples_setup():
    experiment = get_experiment("keras-example")
    config, notice = experiment.config()
    assert notice is None
    m, t, d = config.model, config.train, config.data
    assert (m.family, m.arch, m.latent_dim, m.prior, m.likelihood, m.posterior) == (
        "vae", "conv-keras", 2, "standard", "bernoulli", "diagonal"
    )  # fmt: skip
    assert (t.epochs, t.batch_size, t.lr, t.adam_eps, t.adam_eps_placement, t.lr_schedule, t.keras_log) == (
        30, 128, 1e-3, 1e-7, "keras", "constant", True
    )  # fmt: skip
    assert (d.name, d.binarize, d.validation_size, d.train_with_test) == ("mnist", "none", 0, True)
    log = experiment.reference_log
    assert [row["epoch"] for row in log] == list(range(1, 31))
    assert (log[-1]["loss"], log[-1]["reconstruction_loss"], log[-1]["kl_loss"]) == (146.9508, 140.1473, 6.7960)


def test_it_trains_on_all_70000_images_training_then_test():
    config = get_experiment("keras-example").config()[0]
    dataset, batches = make_batches(config)
    train = batches["train"]
    assert len(train.images) == 70_000 and batches["validation"] is None
    assert torch.equal(train.images[:60_000], dataset.x_train) and torch.equal(train.images[60_000:], dataset.x_test)


def test_keras_log_is_the_mean_of_batch_means_and_the_progress_bars_mean_of_running_means(tmp_path):
    # 200 images at batch 64: batches of 64, 64, 64 and 8; each example of batch s gets loss s + 1
    trainer = Trainer(tiny_config("data.train_limit=200", "train.epochs=1", "train.keras_log=true"), tmp_path / "k")
    step_of = iter(range(10))

    def fake_step(x, **_):
        s = next(step_of)
        total = torch.full((len(x),), float(s + 1))
        return Terms(loss=total.mean(), total=total, reconstruction=0.75 * total, kl=0.25 * total)

    trainer.step = fake_step
    metrics = trainer.train_epoch()
    batch_means = [1.0, 2.0, 3.0, 4.0]
    running = [sum(batch_means[: i + 1]) / (i + 1) for i in range(4)]
    assert metrics["keras_total"] == pytest.approx(sum(batch_means) / 4)
    assert metrics["keras_reconstruction_loss"] == pytest.approx(0.75 * 2.5)
    assert metrics["keras_kl_loss"] == pytest.approx(0.25 * 2.5)
    # Keras 2.15's printed loss, checked against its progress bar: the epoch-end update counts the last twice
    assert metrics["keras_progbar_loss"] == pytest.approx((sum(running) + running[-1]) / 5)
    assert metrics["total"] == pytest.approx((64 * (1 + 2 + 3) + 8 * 4) / 200)  # vaelab's own: per image


def test_the_report_sets_the_logs_side_by_side():
    reference = get_experiment("keras-example").reference_log
    records = [
        {
            "epoch": 1,
            "split": "train",
            "keras_progbar_loss": 250.0,
            "keras_reconstruction_loss": 200.0,
            "keras_kl_loss": 4.0,
        },
        {"epoch": 1, "split": "test", "total": 180.0},
    ]
    rows = training_log_beside(reference, records)
    assert rows[0] == {
        "epoch": 1,
        "published": {"loss": 253.6647, "reconstruction_loss": 205.1592, "kl_loss": 3.9604},
        "ours": {"loss": 250.0, "reconstruction_loss": 200.0, "kl_loss": 4.0},
    }
    assert "ours" not in rows[1] and len(rows) == 30
    section = training_log_section({"training_log": rows})
    assert "| 1 | 253.66 | 250.00 | 205.16 | 200.00 | 3.96 | 4.00 |" in section
    assert "| 30 | 146.95 | – | 140.15 | – | 6.80 | – |" in section


# --- Keras' network: TensorFlow's "same" padding, its z heads; Keras' Adam -----------------------------


def _conv_pair(arch: str, seed: int = 0):
    from vaelab.config import ModelConfig
    from vaelab.model import build_vae

    torch.manual_seed(seed)
    return build_vae(ModelConfig(arch=arch), (1, 28, 28))


def _input_reach(net, out_index: tuple[int, int]) -> torch.Tensor:
    """The input pixels that one output of ``net``'s first strided conv depends on."""
    x = torch.rand(1, 1, 28, 28, requires_grad=True)
    conv = net.net[: 2 if isinstance(net.net[0], torch.nn.ZeroPad2d) else 1]
    conv(x)[0, :, out_index[0], out_index[1]].sum().backward()
    return (x.grad[0, 0] != 0).nonzero()


def test_conv_keras_pads_as_tensorflow_same_and_conv_pads_both_sides():
    """TF's "same" for a 3x3 stride-2 conv of 28 pixels pads one pixel after the image only: output i sees
    inputs 2i .. 2i + 2. torch's padding=1 shifts that to 2i - 1 .. 2i + 1."""
    keras_encoder, torch_encoder = _conv_pair("conv-keras").encoder, _conv_pair("conv").encoder
    for i in (0, 5):
        rows_cols = _input_reach(keras_encoder, (i, i))
        assert rows_cols.min().item() == 2 * i and rows_cols.max().item() == min(2 * i + 2, 27)
        rows_cols = _input_reach(torch_encoder, (i, i))
        assert rows_cols.min().item() == max(2 * i - 1, 0) and rows_cols.max().item() == 2 * i + 1
    last = _input_reach(keras_encoder, (13, 13))
    assert last.min().item() == 26 and last.max().item() == 27  # the third tap is TF's padding


def _mirrored_copy(conv_keras, conv):
    """conv's weights set so that conv(image turned 180 degrees) = conv-keras(image): kernels flipped, the
    7 x 7 grids on either side of the dense layers turned."""
    keras_state, state = conv_keras.state_dict(), {}
    keras_convs = [k for k, v in keras_state.items() if v.dim() == 4]
    torch_convs = [k for k, v in conv.state_dict().items() if v.dim() == 4]
    for a, b in zip(keras_convs, torch_convs, strict=True):
        state[b] = keras_state[a].flip(-2, -1)
    keras_rest = [
        k for k in keras_state if k not in keras_convs and not k.endswith(tuple(c[:-7] + ".bias" for c in keras_convs))
    ]
    torch_rest = [
        k
        for k in conv.state_dict()
        if k not in torch_convs and not k.endswith(tuple(c[:-7] + ".bias" for c in torch_convs))
    ]
    for a, b in zip(keras_rest, torch_rest, strict=True):
        state[b] = keras_state[a].clone()
    for a, b in zip(keras_convs, torch_convs, strict=True):
        state[b[:-7] + ".bias"] = keras_state[a[:-7] + ".bias"].clone()
    grid = (64, 7, 7)
    enc_in = "encoder.net.5.weight"  # the dense layer after the flatten (conv's numbering)
    state[enc_in] = state[enc_in].reshape(16, *grid).flip(-2, -1).reshape(16, -1)
    for key in ("decoder.net.0.weight", "decoder.net.0.bias"):  # the dense layer before the reshape
        value = state[key]
        state[key] = value.reshape(*grid, *value.shape[1:]).flip(1, 2).reshape(value.shape)
    conv.load_state_dict(state)


def test_conv_is_conv_keras_mirrored():
    conv_keras, conv = _conv_pair("conv-keras", 0), _conv_pair("conv", 1)
    _mirrored_copy(conv_keras, conv)
    x = torch.rand(8, 1, 28, 28)
    turn = lambda t: t.flip(-2, -1)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(conv.encoder(turn(x)), conv_keras.encoder(x), atol=1e-5, rtol=1e-5)
        z = torch.randn(8, 2)
        torch.testing.assert_close(turn(conv.decoder(z)), conv_keras.decoder(z), atol=1e-5, rtol=1e-5)
        # and not the same function without the turn: the two architectures do differ
        assert (conv.encoder(x) - conv_keras.encoder(x)).abs().max() > 1e-2


def test_conv_keras_initialises_its_two_z_heads_as_keras_two_dense_layers():
    """Keras' z_mean and z_log_var are Dense(16, 2) each: Glorot range sqrt(6 / 18), not sqrt(6 / 20)."""
    head = [_conv_pair("conv-keras", seed).encoder.net[-1].weight for seed in range(200)]
    widest = torch.stack(head).abs().amax().item()
    assert (6 / 20) ** 0.5 < widest <= (6 / 18) ** 0.5


def _keras_adam(params, grads_per_step, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7):
    """Keras' (legacy) Adam, written from its update: epsilon added to sqrt(v) before the bias correction."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        lr_t = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            params[i] = params[i] - lr_t * m[i] / (v[i].sqrt() + eps)
    return params


@pytest.mark.parametrize("placement", ["keras", "torch"])
def test_keras_epsilon_placement_makes_torchs_adam_keras(placement):
    from vaelab.train.adam import make_adam

    generator = torch.Generator().manual_seed(0)
    start = [
        torch.randn(5, generator=generator, dtype=torch.float64),
        torch.randn(3, generator=generator, dtype=torch.float64),
    ]
    # gradients of the size where the placement matters (near epsilon), then ordinary ones
    grads = [
        [torch.randn(p.shape, generator=generator, dtype=torch.float64) * s for p in start]
        for s in (1e-6, 1e-6, 1e-5, 1, 1)
    ]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    adam = make_adam([{"params": params}], lr=1e-3, eps=1e-7, placement=placement)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        adam.step()
    expected = _keras_adam(start, grads)
    agree = all(torch.allclose(p.detach(), e, rtol=0, atol=1e-12) for p, e in zip(params, expected, strict=True))
    assert agree == (placement == "keras")


def test_keras_adam_resumes_from_a_checkpoint_as_if_never_stopped(tmp_path):
    """Through vaelab's checkpoint file (which rebuilds the optimiser from its saved settings): three
    steps, save, load into a fresh run, three more, equal to six in a row; two groups, as a family's may."""
    from vaelab.train import load_checkpoint, save_checkpoint
    from vaelab.train.adam import make_adam

    def run(stop_after: int | None) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
        groups = lambda m: [{"params": m[0].parameters()}, {"params": m[1].parameters(), "betas": (0.5, 0.9)}]  # noqa: E731
        adam = make_adam(groups(model), lr=1e-3, eps=1e-7, placement="keras")
        for step in range(6):
            if step == stop_after:
                save_checkpoint(tmp_path / "last.safetensors", model, adam, {}, {"epoch": 1})
                torch.manual_seed(1)
                model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
                adam = make_adam(groups(model), lr=1e-3, eps=1e-7, placement="keras")
                load_checkpoint(tmp_path / "last.safetensors", model, adam)
            adam.zero_grad()
            (model(torch.full((1, 3), 1e-5 * (step + 1))) ** 2).sum().backward()
            adam.step()
        assert [g["keras_step"] for g in adam.param_groups] == [6, 6]
        return [p.detach().clone() for p in model.parameters()]

    for resumed, whole in zip(run(stop_after=3), run(stop_after=None), strict=True):
        torch.testing.assert_close(resumed, whole, rtol=0, atol=0)


def test_an_unknown_epsilon_placement_is_refused():
    from vaelab.errors import VaelabError
    from vaelab.train.adam import make_adam

    with pytest.raises(VaelabError, match="one of torch, keras"):
        make_adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, eps=1e-7, placement="tf")
