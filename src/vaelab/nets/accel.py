"""CPU speed choices applied to a network from outside it: oneDNN's channels-last layout, the conv
bias added apart from the convolution, and the bias + ReLU fused into a bf16 convolution.

Which of them pay differs between CPUs, so :func:`speed_choices` measures them at first use, a
few seconds on the study's conv networks, and caches the answer per CPU (model, extensions, torch
version) in the user cache. :func:`accelerate` applies the answer to any network built of torch's
layers, swapping in the subclasses below; parameter names (the safetensors keys) do not change.
``VAELAB_SPEED=plain`` skips the measurement and keeps torch's own layers.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.core.platform import cpu_capabilities
from vaelab.data.sources import cache_dir

CHANNELS_LAST = torch.channels_last


def _add_bias_(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # in the output's dtype (bf16 under autocast), as oneDNN would add it
    return out if bias is None else out.add_(bias.to(out.dtype).view(1, -1, 1, 1))


def _fuse_relu(x: torch.Tensor) -> bool:
    """Whether the fused kernel may run: on a CPU with native bf16, computing in bf16 (the input, or
    autocast to it), eager. fp32 never fuses: it measured slower fused (docs/speed.md)."""
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

    relu: bool = False
    fuse_bf16_relu: bool = True  # set by accelerate() from this CPU's measured speed choices

    def __init__(self, *args, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu

    def _fused(self, x: torch.Tensor, output_padding: list[int]) -> torch.Tensor | None:
        """relu(conv(x) + b) through :class:`_ConvBiasReLU`, or None where the layer does not fuse."""
        fusable = self.relu and self.fuse_bf16_relu and self.bias is not None and self.padding_mode == "zeros"
        if not (fusable and _fuse_relu(x)):
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
        return super().forward(x).contiguous(memory_format=CHANNELS_LAST)


@dataclass(frozen=True)
class SpeedChoices:
    channels_last_bias_apart: bool = False  # NHWC layout and the conv bias added apart
    fused_bf16_relu: bool = False  # bias + ReLU inside the bf16 convolution (native bf16 only)
    measured_ms: dict[str, float] = field(default_factory=dict, compare=False)  # step time of each variant


PLAIN = SpeedChoices()


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    return (x.contiguous(memory_format=CHANNELS_LAST), *args[1:]) if x.dim() == 4 else args


def accelerate(net: nn.Module, choices: SpeedChoices | None = None) -> nn.Module:
    """Apply ``choices`` (default: this CPU's measured ones) to ``net`` in place; returns ``net``."""
    has_conv = any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in net.modules())
    if not has_conv:
        return net  # the choices concern convolutions only
    choices = speed_choices() if choices is None else choices
    on = choices.channels_last_bias_apart
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i, layer in enumerate(seq):
            swap = {nn.Conv2d: Conv2d, nn.ConvTranspose2d: ConvTranspose2d}
            plain = {Conv2d: nn.Conv2d, ConvTranspose2d: nn.ConvTranspose2d}
            if on and type(layer) in swap:
                layer.__class__ = swap[type(layer)]
                layer.relu = i + 1 < len(seq) and isinstance(seq[i + 1], nn.ReLU)
                if layer.relu:
                    seq[i + 1] = FusedReLU()
            elif not on and type(layer) in plain:
                if layer.relu:
                    seq[i + 1] = nn.ReLU(inplace=True)
                layer.__class__ = plain[type(layer)]
                del layer.relu
            if isinstance(layer, (Conv2d, ConvTranspose2d)):
                layer.fuse_bf16_relu = choices.fused_bf16_relu
            if on and type(layer) is nn.Unflatten:
                layer.__class__ = UnflattenChannelsLast
            elif not on and type(layer) is UnflattenChannelsLast:
                layer.__class__ = nn.Unflatten
    handle = getattr(net, "_channels_last_hook", None)
    if handle is not None:
        handle.remove()
        net._channels_last_hook = None
    if on:
        net.to(memory_format=CHANNELS_LAST)
        net._channels_last_hook = net.register_forward_pre_hook(_channels_last_input)
    else:
        net.to(memory_format=torch.contiguous_format)
    return net


def _step_ms(encoder: nn.Module, decoder: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    """Best-of-three milliseconds of one forward + backward through encoder and decoder."""

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = decoder(encoder(x)[:, :2])
        out.float().square().mean().backward()

    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(3):
            step()
        best = min(best, (time.perf_counter() - start) / 3 * 1e3)
    return best


def measure_speed_choices(batch: int = 64) -> SpeedChoices:
    """Time the study's conv networks with and without each choice, here and now."""
    from vaelab.nets.conv import ConvDecoder, ConvEncoder  # the architecture they were chosen for

    with torch.random.fork_rng(devices=[]):  # measuring must not move the run's random stream
        torch.manual_seed(0)
        x = torch.rand(batch, 1, 28, 28)
        nets = (ConvEncoder((1, 28, 28), 4), ConvDecoder(2, (1, 28, 28), 1))
    return _time_variants(nets, x)


def _time_variants(nets: tuple[nn.Module, nn.Module], x: torch.Tensor) -> SpeedChoices:
    ms = {"plain fp32": _step_ms(*[accelerate(n, PLAIN) for n in nets], x, None)}
    tuned = SpeedChoices(channels_last_bias_apart=True)
    ms["channels-last fp32"] = _step_ms(*[accelerate(n, tuned) for n in nets], x, None)
    layout = ms["channels-last fp32"] < ms["plain fp32"]
    fused = False
    if cpu_capabilities().native_bf16:
        bf16 = SpeedChoices(channels_last_bias_apart=True, fused_bf16_relu=False)
        ms["channels-last bf16"] = _step_ms(*[accelerate(n, bf16) for n in nets], x, torch.bfloat16)
        bf16 = SpeedChoices(channels_last_bias_apart=True, fused_bf16_relu=True)
        ms["channels-last bf16 fused"] = _step_ms(*[accelerate(n, bf16) for n in nets], x, torch.bfloat16)
        fused = layout and ms["channels-last bf16 fused"] < ms["channels-last bf16"]
    return SpeedChoices(layout, fused, {k: round(v, 3) for k, v in ms.items()})


_chosen: SpeedChoices | None = None


def speed_choices() -> SpeedChoices:
    """This CPU's choices: from the cache, else measured once and cached (``VAELAB_SPEED=plain``: none)."""
    global _chosen
    if os.environ.get("VAELAB_SPEED", "").strip() == "plain":
        return PLAIN
    if _chosen is not None:
        return _chosen
    cpu = cpu_capabilities()
    path = cache_dir() / f"speed-choices-{cpu.key}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        _chosen = SpeedChoices(
            bool(saved["channels_last_bias_apart"]), bool(saved["fused_bf16_relu"]), saved["measured_ms"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        _chosen = measure_speed_choices()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**asdict(_chosen), "cpu": cpu.model, "extensions": cpu.extensions}, indent=2))
        except OSError:
            pass  # an unwritable cache only means measuring again next time
    return _chosen


def plain_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode without this CPU's speed choices: plain torch ops, for export."""
    return accelerate(copy.deepcopy(net), PLAIN).eval()
