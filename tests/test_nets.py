"""The networks' speed tricks compute the same function and the same gradients as the plain layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import native_bf16
from vaelab.config import ModelConfig
from vaelab.model import ELBO, build_vae
from vaelab.nets.accel import PLAIN, SpeedChoices, accelerate, measure_speed_choices, speed_choices

FUSED = SpeedChoices(channels_last_bias_apart=True, fused_bf16_relu=True)


def _out_of_place(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return plain


def _grads(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = ELBO()(model, x).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("config", [ModelConfig(), ModelConfig(arch="dense"), ModelConfig(arch="mlp", hidden=[32])])
def test_in_place_relus_give_the_same_loss_and_gradients(config):
    torch.manual_seed(0)
    model = build_vae(config, (1, 28, 28))
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    x = torch.rand(5, 1, 28, 28)
    loss, grads = _grads(model, x, seed=1)
    plain_loss, plain_grads = _grads(_out_of_place(model), x, seed=1)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def _plain_torch_layers(model: nn.Module) -> nn.Module:
    """The same model with torch's own forward for every conv layer (bias inside the convolution),
    followed by torch's ReLU where vaelab fuses one into the layer."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        for cls in (nn.ConvTranspose2d, nn.Conv2d):
            if isinstance(module, cls):
                torch_forward = cls.forward.__get__(module)
                module.forward = (
                    (lambda x, f=torch_forward: F.relu(f(x))) if getattr(module, "relu", False) else torch_forward
                )
                break
    return plain


def _backward_node_names(loss: torch.Tensor) -> set[str]:
    """The names of the backward nodes in ``loss``'s graph."""
    seen, names, stack = set(), set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def _bf16_loss_and_grads_against_torchs_layers(model: nn.Module, x: torch.Tensor):
    results = []
    for candidate in (model, _plain_torch_layers(model)):
        candidate.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        with candidate.networks_in(torch.bfloat16):
            loss = ELBO()(candidate, x).loss
        loss.backward()
        results.append((loss, {n: p.grad.clone() for n, p in candidate.named_parameters()}))
    return results


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16: the fused bf16 kernel never runs here")
def test_bf16_conv_layers_fuse_the_relu_and_match_torchs_layers():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(), (1, 28, 28))
    for net in (model.encoder, model.decoder):
        accelerate(net, FUSED)
    x = torch.rand(6, 1, 28, 28)
    (loss, grads), (plain_loss, plain_grads) = _bf16_loss_and_grads_against_torchs_layers(model, x)
    assert "_ConvBiasReLUBackward" in _backward_node_names(loss)  # the fused kernel ran
    assert "_ConvBiasReLUBackward" not in _backward_node_names(plain_loss)
    # bf16 networks: the fused kernel adds the bias before rounding, torch's layers after
    torch.testing.assert_close(loss.detach(), plain_loss.detach(), rtol=2e-2, atol=0.5)
    for name, grad in grads.items():
        scale = plain_grads[name].abs().max().item()
        torch.testing.assert_close(grad, plain_grads[name], rtol=0.1, atol=0.05 * scale + 1e-6, msg=name)


def test_without_native_bf16_the_fused_kernel_never_runs_and_bf16_still_matches(without_native_bf16):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(), (1, 28, 28))
    for net in (model.encoder, model.decoder):
        accelerate(net, FUSED)  # even where asked to fuse
    x = torch.rand(4, 1, 28, 28)
    (loss, grads), (plain_loss, plain_grads) = _bf16_loss_and_grads_against_torchs_layers(model, x)
    assert "_ConvBiasReLUBackward" not in _backward_node_names(loss)
    torch.testing.assert_close(loss.detach(), plain_loss.detach(), rtol=2e-2, atol=0.5)
    for name, grad in grads.items():
        scale = plain_grads[name].abs().max().item()
        torch.testing.assert_close(grad, plain_grads[name], rtol=0.1, atol=0.05 * scale + 1e-6, msg=name)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_conv_layers_compute_what_torchs_layers_compute(likelihood):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(likelihood=likelihood, prior="correlated"), (1, 28, 28))
    x = torch.rand(6, 1, 28, 28)
    loss, grads = _grads(model, x, seed=2)
    plain_loss, plain_grads = _grads(_plain_torch_layers(model), x, seed=2)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    # parameter names are torch's (the safetensors keys of saved models)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in _plain_torch_layers(model).named_parameters()]


def test_conv_layers_under_bf16_autocast_keep_fp32_parameters_and_gradients():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(), (1, 28, 28))
    x = torch.rand(6, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ELBO()(model, x).loss
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(loss)


@pytest.mark.parametrize("config", [ModelConfig(), ModelConfig(prior="correlated", prior_sampling="study")])
def test_mixed_precision_runs_the_networks_in_bf16_and_the_probability_in_fp32(config):
    torch.manual_seed(0)
    model = build_vae(config, (1, 28, 28))
    x = torch.rand(6, 1, 28, 28)
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    torch.manual_seed(1)
    with model.networks_in(torch.bfloat16):
        q = model.q_z(x)
        z = q.rsample()
        terms = ELBO()(model, x)
    for h in hooks:
        h.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    assert model.network_dtype is None  # restored
    assert q.base_dist.loc.dtype == z.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in (terms.loss, terms.total, terms.reconstruction, terms.kl))
    torch.manual_seed(1)
    z32 = model.q_z(x).rsample()  # the same noise as in fp32: drawn in fp32 from the same stream
    torch.testing.assert_close(z, z32, rtol=0.05, atol=0.05)
    torch.manual_seed(2)
    full = ELBO()(model, x).total
    torch.manual_seed(2)
    with model.networks_in(torch.bfloat16):
        mixed = ELBO()(model, x).total
    torch.testing.assert_close(mixed, full, rtol=0.02, atol=0.5)


@pytest.mark.skipif(not native_bf16(), reason="no native bf16: vaelab refuses bf16 training on this CPU")
def test_compiled_bf16_conv_layer_trains_like_eager():
    # compiled, the layer leaves the fusion to inductor; its gradients must match eager's
    from vaelab.nets.accel import ConvTranspose2d

    torch.manual_seed(0)
    layer = ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, relu=True)
    x = torch.randn(2, 8, 5, 5)
    grads = []
    for run in (layer, torch.compile(layer)):
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run(x)
        out.float().square().sum().backward()
        grads.append((out.detach().float(), layer.weight.grad.clone(), layer.bias.grad.clone()))
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=0.05, atol=0.05 * eager.abs().max().item())


@pytest.mark.parametrize("first, second", [(FUSED, PLAIN), (PLAIN, FUSED)])
def test_speed_choices_change_the_layers_not_the_function_nor_the_parameter_names(first, second):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(), (1, 28, 28))
    names = [n for n, _ in model.named_parameters()]
    x = torch.rand(5, 1, 28, 28)
    results = []
    for choices in (first, second):
        for net in (model.encoder, model.decoder):
            accelerate(net, choices)
        on = choices.channels_last_bias_apart
        assert any(type(m).__module__ == "vaelab.nets.accel" for m in model.modules()) == on
        assert model.encoder.net[2].weight.is_contiguous(memory_format=torch.channels_last) == on
        results.append(_grads(model, x, seed=4))
        assert [n for n, _ in model.named_parameters()] == names
    (loss, grads), (other_loss, other_grads) = results
    torch.testing.assert_close(loss, other_loss, rtol=1e-5, atol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, other_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_speed_choices_are_measured_once_per_cpu_and_cached(monkeypatch, tmp_path):
    import vaelab.nets.accel as accel

    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path))
    monkeypatch.setattr(accel, "_chosen", None)
    chosen = speed_choices()
    (cached,) = tmp_path.glob("speed-choices-*.json")
    assert {"plain fp32", "channels-last fp32"} <= chosen.measured_ms.keys()
    assert chosen.channels_last_bias_apart == (
        chosen.measured_ms["channels-last fp32"] < chosen.measured_ms["plain fp32"]
    )
    monkeypatch.setattr(accel, "_chosen", None)
    cached.write_text(cached.read_text().replace('"fused_bf16_relu": false', '"fused_bf16_relu": true'))
    assert speed_choices().fused_bf16_relu  # read back from the cache, not measured again
    monkeypatch.setenv("VAELAB_SPEED", "plain")
    assert speed_choices() == PLAIN


def test_without_native_bf16_the_measurement_never_tries_bf16(without_native_bf16):
    choices = measure_speed_choices(batch=8)
    assert not choices.fused_bf16_relu and not any("bf16" in k for k in choices.measured_ms)


def test_measuring_the_speed_choices_leaves_the_random_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    measure_speed_choices(batch=4)
    assert torch.equal(torch.rand(3), expected)  # a run that measures first trains as one that does not
