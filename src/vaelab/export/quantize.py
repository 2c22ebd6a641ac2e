"""int8 versions of an exported ONNX part, through onnxruntime's quantisation tools.

Two schemes:

* ``int8``: post-training quantisation of weights and activations. A part with convolutions is
  quantised statically (QDQ, activation ranges calibrated on the inputs given: training images for
  an encoder, codes drawn from q(z|x) of training images for a decoder); a part of dense layers only
  is quantised dynamically (int8 weights, activations quantised on the fly per call).
* ``int8-weights``: the weights stored as int8 (per output channel where a channel has enough
  weights to pay for its scale, else per tensor) and dequantised as the file loads; activations stay
  fp32. The file is as small, and the computation that of the fp32 model.

Which to ship is a measured choice (docs/int8.md): what each costs in nats differs per model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from vaelab.errors import VaelabError

SCHEMES = {
    "int8": "int8 weights and activations (static, calibrated, for convolutions; dynamic for dense layers)",
    "int8-weights": "int8 weights, fp32 activations",
}
QUANTISED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CONVOLUTIONS = ("Conv", "ConvTranspose")
MIN_WEIGHTS_PER_CHANNEL = 32  # fewer, and a per-channel fp32 scale costs more than it saves


@contextlib.contextmanager
def _quiet():
    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs its calibration progress at INFO
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def op_types(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def quantize_file(
    src: Path, dst: Path, scheme: str, input_name: str, calibration: np.ndarray | None, scratch: Path
) -> str:
    """Write ``src`` quantised by ``scheme`` to ``dst``; returns how, in words."""
    if scheme == "int8-weights":
        weight_only_int8(src, dst)
        return "int8 weights, fp32 activations"
    if scheme != "int8":
        raise VaelabError(f"unknown quantisation {scheme!r}; choose {', '.join(SCHEMES)}")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / f"{src.stem}-prepared.onnx"
    with _quiet():
        quant_pre_process(str(src), str(prepared))
    if not op_types(prepared) & set(CONVOLUTIONS):
        with _quiet():
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8)
        return "dynamic: int8 weights, activations quantised per call"
    if calibration is None or not len(calibration):
        raise VaelabError("static int8 quantisation of convolutions needs calibration inputs")
    with _quiet():
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(input_name, np.ascontiguousarray(calibration, dtype=np.float32)),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTISED_OPS),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
    return f"static: QDQ, activation ranges calibrated on {len(calibration)} inputs"


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: the calibration inputs, 64 at a time."""

    def __init__(self, name: str, data: np.ndarray, batch: int = 64) -> None:
        self.batches = iter([{name: data[i : i + batch]} for i in range(0, len(data), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # not needed for min-max calibration
        pass


def _weight_axis(node, weight: np.ndarray) -> int:
    """The output-channel axis of a layer's weight."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return weight.ndim - 1  # MatMul: x @ W


def weight_only_int8(src: Path, dst: Path) -> None:
    """Store every Conv / ConvTranspose / Gemm / MatMul weight of ``src`` as symmetric int8 behind a
    DequantizeLinear node; everything else is unchanged."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    done: set[str] = set()
    dequantize = []
    for node in graph.node:
        if node.op_type not in QUANTISED_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in initializers or name in done:
            continue
        weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
        if weight.ndim < 2:
            continue
        axis = _weight_axis(node, weight)
        per_channel = weight.size // weight.shape[axis] >= MIN_WEIGHTS_PER_CHANNEL
        if per_channel:
            others = tuple(i for i in range(weight.ndim) if i != axis)
            scale = np.abs(weight).max(axis=others) / 127.0
            scale[scale == 0] = 1.0
            shape = [1] * weight.ndim
            shape[axis] = -1
            q = np.round(weight / scale.reshape(shape))
        else:
            scale = np.array(max(float(np.abs(weight).max()) / 127.0, 1e-12), dtype=np.float32)
            q = np.round(weight / scale)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.clip(q, -127, 127).astype(np.int8), f"{name}_int8"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
            ]
        )
        attrs = {"axis": axis} if per_channel else {}
        dequantize.append(
            helper.make_node(
                "DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name], name=f"{name}_dequantize", **attrs
            )
        )
        done.add(name)
    for node in reversed(dequantize):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
