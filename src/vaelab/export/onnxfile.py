"""A model's encoder or decoder as an ONNX file, checked with onnxruntime as it is written.

The part is what the model's protocol offers (``export_part``): the encoder maps images to the
posterior's ``mean`` and ``scale`` (and ``encoder_output``, the network's own output), the decoder
maps codes ``z`` to ``mean`` images (and ``decoder_output``). torch's own exporter (``dynamo=True``)
writes it with a dynamic batch size; the file's metadata records the vaelab version, the opset, the
part, its source and any quantisation. Before the file is moved into place, onnxruntime runs it on
the inputs given and its outputs are compared with PyTorch's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import vaelab
from vaelab.errors import VaelabError
from vaelab.io import atomic_write
from vaelab.model.base import EXPORT_PARTS, ExportPart, LatentVariableModel

FORMATS = ("onnx",)
OPSET = 20
# fp32 outputs agree when |onnx - torch| <= ATOL + RTOL * |torch| everywhere (kernels sum in other orders)
ATOL, RTOL = 1e-4, 1e-4


@dataclass
class Exported:
    path: Path
    part: str
    quantize: str  # "none", or a scheme of vaelab.export.quantize.SCHEMES
    method: str  # how it was quantised, in words ("" for fp32)
    size: int  # bytes
    opset: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per output, against PyTorch fp32
    within_tolerance: bool = True

    def summary(self) -> str:
        diffs = ", ".join(f"{name} {value:.2g}" for name, value in self.max_abs_diff.items())
        what = f"int8 ({self.method})" if self.quantize != "none" else "fp32"
        verdict = (
            f"within the fp32 tolerance {ATOL:g} + {RTOL:g} * |value|"
            if self.quantize == "none"
            else "an int8 model's difference, not a tolerance check; its cost in nats is in docs/int8.md"
        )
        return (
            f"wrote {self.path} ({self.part}, {what}, {self.size:,} bytes, opset {self.opset}); "
            f"onnxruntime against PyTorch, max abs diff: {diffs} ({verdict})"
        )


def part_paths(out: Path, part: str) -> dict[str, Path]:
    """Where each part goes: ``out`` itself for one part; ``out``'s stem + ``-encoder`` / ``-decoder`` for both."""
    if part == "both":
        return {p: out.with_name(f"{out.stem}-{p}{out.suffix or '.onnx'}") for p in EXPORT_PARTS}
    if part not in EXPORT_PARTS:
        raise VaelabError(f"unknown part {part!r}; choose encoder, decoder or both")
    return {part: out}


def check_out(out: Path) -> None:
    """Refuse an output path that cannot be a file, before any work."""
    if out.is_dir():
        raise VaelabError(f"cannot write {out}: it is a directory")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise VaelabError(f"cannot write {out}: a part of the path is a file, not a directory")


def to_onnx(exported: ExportPart, path: Path) -> None:
    """Write ``exported.module`` as ONNX at ``path`` (batch dimension dynamic), quietly."""
    batch = torch.export.Dim("batch", min=1, max=2**20)
    sink = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                exported.module,
                (exported.example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[exported.input_name],
                output_names=list(exported.output_names),
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except Exception as err:  # the exporter's own errors are many and long
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise VaelabError(f"torch's ONNX exporter could not export the {path.stem} part: {first}") from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    program.save(str(path), external_data=False)


def set_metadata(path: Path, entries: dict[str, str]) -> None:
    """Add ``entries`` to the file's metadata_props and drop the exporter's per-node notes (stack
    traces, source names), which only make the file larger."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    known = {prop.key: prop for prop in model.metadata_props}
    for key, value in entries.items():
        if key in known:
            known[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def session(path: Path, threads: int = 1):
    """An onnxruntime CPU session of ``path`` on ``threads`` threads (one: the latency figures' setting)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings such as the exporter's static output shapes are not errors
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise VaelabError(f"onnxruntime cannot load {path}: {str(err).strip().splitlines()[0]}") from None


def compare(path: Path, exported: ExportPart, inputs: np.ndarray) -> dict[str, float]:
    """Max abs difference of each output between onnxruntime on ``path`` and PyTorch, on ``inputs``
    (all at once, then the first one alone: the batch size is dynamic)."""
    sess = session(path)
    diffs = dict.fromkeys(exported.output_names, 0.0)
    for batch in (inputs, inputs[:1]):
        got = sess.run(list(exported.output_names), {exported.input_name: batch})
        with torch.no_grad():
            want = exported.module(torch.from_numpy(batch))
        for name, a, b in zip(exported.output_names, got, want):
            b = b.numpy()
            if a.shape != b.shape:
                raise VaelabError(f"{path}: output {name} has shape {a.shape}, PyTorch's has {b.shape}")
            if not np.isfinite(a).all():
                raise VaelabError(f"{path}: onnxruntime gives NaN or inf in output {name}")
            diffs[name] = max(diffs[name], float(np.abs(a - b).max()))
    return diffs


def within_tolerance(path: Path, exported: ExportPart, inputs: np.ndarray) -> bool:
    sess = session(path)
    got = sess.run(list(exported.output_names), {exported.input_name: inputs})
    with torch.no_grad():
        want = exported.module(torch.from_numpy(inputs))
    return all(np.allclose(a, b.numpy(), rtol=RTOL, atol=ATOL) for a, b in zip(got, want))


def export_part(
    model: LatentVariableModel,
    part: str,
    out: Path,
    inputs: np.ndarray | None = None,
    quantize: str = "none",
    calibration: np.ndarray | None = None,
    source: str = "",
) -> Exported:
    """Export ``part`` of ``model`` to ``out`` (ONNX), optionally quantised, and check it with onnxruntime.

    ``inputs`` (float32, batch first) are what the check runs (default: the part's example input);
    ``calibration`` the inputs a static quantisation calibrates on. An fp32 file whose outputs are
    not within tolerance of PyTorch's is not written (VaelabError); an int8 file's differences are reported.
    """
    from vaelab.export.quantize import SCHEMES, quantize_file

    if quantize != "none" and quantize not in SCHEMES:
        raise VaelabError(f"unknown quantisation {quantize!r}; choose none or {', '.join(SCHEMES)}")
    out = Path(out)
    check_out(out)
    exported = model.export_part(part)
    inputs = exported.example.numpy() if inputs is None else np.ascontiguousarray(inputs, dtype=np.float32)
    metadata = {
        "vaelab_version": vaelab.__version__,
        "opset": str(OPSET),
        "part": part,
        "source": source,
        "input": exported.input_name,
        "outputs": ",".join(exported.output_names),
        "image_shape": ",".join(map(str, model.image_shape)),
        "latent_dim": str(model.latent_dim),
        "quantization": quantize,
    }
    result: dict[str, Exported] = {}

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="vaelab-export-") as scratch:
            fp32 = Path(scratch) / f"{part}.onnx"
            to_onnx(exported, fp32)
            set_metadata(fp32, metadata)
            method = ""
            if quantize != "none":
                method = quantize_file(fp32, tmp, quantize, exported.input_name, calibration, Path(scratch))
                set_metadata(tmp, {**metadata, "quantization_method": method})
                ok = True
            else:
                tmp.write_bytes(fp32.read_bytes())
                ok = within_tolerance(tmp, exported, inputs)
            diffs = compare(tmp, exported, inputs)
            result["x"] = Exported(out, part, quantize, method, tmp.stat().st_size, OPSET, diffs, ok)
            if not ok:
                raise _NotWithinTolerance(result["x"])

    try:
        atomic_write(out, write)
    except _NotWithinTolerance as err:
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in err.exported.max_abs_diff.items())
        raise VaelabError(
            f"onnxruntime's {part} differs from PyTorch's beyond {ATOL:g} + {RTOL:g} * |value| "
            f"(max abs diff: {diffs}); {out} was not written"
        ) from None
    return result["x"]


class _NotWithinTolerance(Exception):
    def __init__(self, exported: Exported) -> None:
        super().__init__("not within tolerance")
        self.exported = exported
