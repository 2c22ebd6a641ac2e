"""FLOPs of a training step, counted from the layers (a multiply-add is 2 FLOPs).

Forward, per image: Linear 2*in*out; Conv2d 2*Cin*k*k*Cout*Hout*Wout; ConvTranspose2d
2*Cin*k*k*Cout*Hin*Win (every input pixel scatters a k x k x Cout patch). Backward costs the same
again for the weight gradient, and again for the input gradient, except in the first layer, whose
input (the data) needs none. Elementwise work (activations, loss, Adam) is not counted: it is
bandwidth, not FLOPs, and counting it would flatter the rate.
"""

from __future__ import annotations

import torch
from torch import nn


def forward_flops_per_layer(model: nn.Module, example: torch.Tensor, call) -> list[tuple[str, float]]:
    """(layer name, forward FLOPs per image) for every Linear / Conv2d / ConvTranspose2d that ``call`` runs."""
    counts: list[tuple[str, float]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        x = inputs[0]
        per_image = x.shape[0] if x.dim() > 1 else 1
        if isinstance(module, nn.Linear):
            flops = 2 * module.in_features * module.out_features * (x.numel() // module.in_features) / per_image
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops = 2 * module.in_channels * k * module.out_channels * x.shape[-2] * x.shape[-1] / module.groups
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops = (
                2 * module.in_channels * k * module.out_channels * output.shape[-2] * output.shape[-1] / module.groups
            )
        else:
            return
        counts.append((names.get(module, type(module).__name__), float(flops)))

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.no_grad():
            call(example)
    finally:
        for h in handles:
            h.remove()
    return counts


def training_flops_per_image(model: nn.Module, example: torch.Tensor, call) -> float:
    """Forward + weight gradients + input gradients (none for the first layer), per image."""
    layers = forward_flops_per_layer(model, example, call)
    forward = sum(f for _, f in layers)
    first = layers[0][1] if layers else 0.0
    return 3 * forward - first
