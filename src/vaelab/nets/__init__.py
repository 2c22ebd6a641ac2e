"""Encoder and decoder networks: the study's conv pair, and fully connected ones."""

from vaelab.nets.conv import ConvDecoder, ConvEncoder
from vaelab.nets.mlp import MLPDecoder, MLPEncoder, mlp

__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "mlp"]
