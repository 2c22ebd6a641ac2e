"""Encoder and decoder networks: the study's conv pair, the disentanglement papers' 64x64 conv pair, and fully
connected ones."""

from vaelab.nets.conv import ConvDecoder, ConvEncoder
from vaelab.nets.conv64 import Conv64Decoder, Conv64Encoder
from vaelab.nets.mlp import MLPDecoder, MLPEncoder, mlp

__all__ = ["Conv64Decoder", "Conv64Encoder", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "mlp"]
