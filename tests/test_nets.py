"""The networks' speed tricks compute the same function and the same gradients as the plain layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.model import ELBO, build_vae


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
