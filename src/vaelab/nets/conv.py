"""The study's convolutional encoder and decoder (Keras' VAE example architecture).

Encoder: Conv 32 3x3 s2 ReLU -> Conv 64 3x3 s2 ReLU -> Flatten -> Dense 16 ReLU -> Dense(out).
Decoder: Dense 7*7*64 ReLU -> reshape -> ConvT 64 3x3 s2 ReLU -> ConvT 32 3x3 s2 ReLU -> ConvT(out) 3x3.
Padding reproduces Keras' "same": 28 -> 14 -> 7 and back. Any H, W divisible by 4 works.

The ReLUs after the conv layers run inside the convolution (oneDNN post-ops, ``relu=True``); the
dense layers' ReLUs run in place: each directly follows its layer, whose output nothing else reads
(autograd saves those layers' inputs, not their outputs), so no extra activation tensor is
allocated, in training and in inference alike.

Weights are initialised as Keras does (Glorot-uniform weights, zero biases), not with PyTorch's
defaults: with PyTorch's smaller default init the 16-unit ReLU bottleneck tends to go dead early and
the 2-D model collapses to the prior (KL ~0, loss ~206 nats) in our runs; with Keras' init it trains
as in the study.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.core.platform import cpu_capabilities
from vaelab.errors import VaelabError


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC layout: on CPU it sends convolutions, and above all the transposed ones, through oneDNN's
    fast kernels (about 2x faster forward + backward for this network, measured with `vaelab bench`)."""
    return x.contiguous(memory_format=torch.channels_last)


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv, transposed conv and dense layer."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def _check_divisible(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise VaelabError(f"the conv architecture needs height and width divisible by 4, got {h}x{w}")


def _add_bias_(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # in the output's dtype (bf16 under autocast), as oneDNN would add it
    return out if bias is None else out.add_(bias.to(out.dtype).view(1, -1, 1, 1))


def _fuse_relu(x: torch.Tensor) -> bool:
    """Whether the fused kernel pays: on CPU, computing in bf16 (the input, or autocast to it), eager.

    In fp32 the whole training step measured 1-3% slower fused (38.4-38.8 against 39.1-39.9 ms),
    in bf16 8-9% faster (23.1-23.3 against 21.1-21.5 ms; the conv VAE, batch 128, A/B alternated).
    """
    if torch.compiler.is_compiling() or x.device.type != "cpu" or not cpu_capabilities().native_bf16:
        return False  # compiled (train.compile), inductor fuses the bias and ReLU its own way
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return x.dtype == torch.bfloat16 or (autocast and x.dtype == torch.float32)


class _ConvBiasReLU(torch.autograd.Function):
    """relu(conv(x, w) + b) as one oneDNN kernel, the bias and the ReLU applied as post-ops while
    the output is still in cache, so neither takes a pass over the activation of its own.

    Measured here (2 cores, batch 128, channels-last): the study's 64 -> 32 transposed conv with
    bias and ReLU takes 1.07 ms forward in bf16 fused against 2.31 ms as three ops. Used in bf16
    only (see :func:`_fuse_relu`). The backward is the ReLU mask, the bias gradient (a sum) and torch's own
    convolution backward without bias, as in :class:`Conv2d`.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, transposed, stride, padding, output_padding, dilation, groups):
        if transposed:
            out = torch.ops.mkldnn._convolution_transpose_pointwise(
                x, weight, bias, padding, output_padding, stride, dilation, groups, "relu", [], ""
            )
        else:
            out = torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, padding, stride, dilation, groups, "relu", [], ""
            )
        ctx.save_for_backward(x, weight, out)
        ctx.geometry = (stride, padding, dilation, transposed, output_padding, groups)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad_out, out, 0)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, *ctx.geometry, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        )
        grad_b = grad.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


class _BiasApart:
    """What vaelab's conv layers add to torch's: the bias added apart from the convolution, and with
    ``relu=True`` the ReLU after it, fused into one kernel where that pays (:func:`_fuse_relu`)."""

    def __init__(self, *args, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu

    def _fused(self, x: torch.Tensor, output_padding: list[int]) -> torch.Tensor | None:
        """relu(conv(x) + b) through :class:`_ConvBiasReLU`, or None where the layer does not fuse."""
        if not (self.relu and self.bias is not None and self.padding_mode == "zeros" and _fuse_relu(x)):
            return None
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type):  # what autocast would hand the convolution
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            return _ConvBiasReLU.apply(
                x, weight, bias, self.transposed, list(self.stride), list(self.padding), list(output_padding),
                list(self.dilation), self.groups,
            )  # fmt: skip

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        out = _add_bias_(out, self.bias)
        return out.relu_() if self.relu else out

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


class Conv2d(_BiasApart, nn.Conv2d):
    """nn.Conv2d with the bias added apart from oneDNN's convolution (same parameters, same result);
    with ``relu=True`` the layer computes relu(conv(x) + b), fused (:class:`_ConvBiasReLU`).

    oneDNN computes the bias gradient inside its weight-gradient pass, slowly: the backward pass of the
    study's convolutions takes up to 40% longer with it in bf16 and up to 15% in fp32 (measured
    here), while summing the output gradient over batch and pixels costs ~0.1 ms. The add runs in
    place on the fresh convolution output, which nothing else reads.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self._fused(x, [0, 0])
        return fused if fused is not None else self._finish(self._conv_forward(x, self.weight, None))


class ConvTranspose2d(_BiasApart, nn.ConvTranspose2d):
    """nn.ConvTranspose2d with the bias added apart, and optionally the ReLU fused, as :class:`Conv2d`."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        fused = self._fused(x, output_padding)
        if fused is not None:
            return fused
        out = F.conv_transpose2d(
            x, self.weight, None, self.stride, self.padding, output_padding, self.groups, self.dilation
        )
        return self._finish(out)


class FusedReLU(nn.Identity):
    """Where the ReLU stood before it was fused into the layer above (``relu=True``): a placeholder,
    so that the modules keep their indices and the parameters their names (the safetensors keys of
    saved models)."""


class UnflattenChannelsLast(nn.Unflatten):
    """Unflatten into an NCHW shape with NHWC memory. A subclass, not an extra module, so the
    parameter names (the safetensors keys of saved models) stay those of the plain network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last(super().forward(x))


class ConvEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        _check_divisible(image_shape)
        c, h, w = image_shape
        self.net = nn.Sequential(
            Conv2d(c, 32, 3, stride=2, padding=1, relu=True),
            FusedReLU(),
            Conv2d(32, 64, 3, stride=2, padding=1, relu=True),
            FusedReLU(),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 16),
            nn.ReLU(inplace=True),
            nn.Linear(16, out_features),
        )
        keras_init(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(channels_last(x))


class ConvDecoder(nn.Module):
    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        _check_divisible(image_shape)
        _, h, w = image_shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 64 * (h // 4) * (w // 4)),
            nn.ReLU(inplace=True),
            UnflattenChannelsLast(1, (64, h // 4, w // 4)),
            ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1, relu=True),
            FusedReLU(),
            ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1, relu=True),
            FusedReLU(),
            ConvTranspose2d(32, out_channels, 3, stride=1, padding=1),
        )
        keras_init(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    @torch.no_grad()
    def set_output_bias(self, mean_image: torch.Tensor, output_for_mean) -> None:
        """Set the last layer's bias to ``output_for_mean`` of each channel's mean over pixels (the
        layer has one bias per channel, so it can match the channel's mean intensity, no more)."""
        last = self.net[-1]
        last.bias.copy_(output_for_mean(mean_image.reshape(last.bias.shape[0], -1).mean(1)))
