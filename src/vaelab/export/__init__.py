"""Ship a model: its encoder and decoder as ONNX files, int8 versions, and their latency.

Layer: above train / eval, below the CLI. Everything here asks the model's protocol
(``export_part``, ``features``, ``networks_replaced``) and never names a family.
"""

from vaelab.export.onnxfile import FORMATS, OPSET, Exported, export_part, part_paths, session
from vaelab.export.quantize import SCHEMES
from vaelab.export.ship import encode_split, export, onnx_networks, part_inputs

__all__ = [
    "FORMATS",
    "OPSET",
    "SCHEMES",
    "Exported",
    "encode_split",
    "export",
    "export_part",
    "onnx_networks",
    "part_inputs",
    "part_paths",
    "session",
]
