"""Decode a grid of latent codes with an exported vaelab decoder: onnxruntime and numpy only, no torch.

    vaelab export --pretrained seed-2d --part decoder --out decoder.onnx
    python examples/onnx_decode_grid.py decoder.onnx grid.png --n 15

The grid walks the first two latent dimensions over standard-normal quantiles (5% to 95%), the
others held at 0, as the study's manifold figure does; the image is a greyscale PNG.
"""

from __future__ import annotations

import argparse
import struct
import zlib
from statistics import NormalDist

import numpy as np
import onnxruntime as ort


def latent_grid(n: int, latent_dim: int) -> np.ndarray:
    """n*n codes, row by row: dimension 1 down the rows, dimension 0 across (quantiles of N(0, 1))."""
    q = np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)], dtype=np.float32)
    z = np.zeros((n * n, latent_dim), dtype=np.float32)
    z[:, 0] = np.tile(q, n)
    if latent_dim > 1:
        z[:, 1] = np.repeat(q[::-1], n)
    return z


def tile(images: np.ndarray, n: int) -> np.ndarray:
    """n*n images (N x C x H x W, values in [0, 1]) -> one (n*H) x (n*W) uint8 image (channel mean)."""
    grey = images.mean(axis=1)
    _, h, w = grey.shape
    grid = grey.reshape(n, n, h, w).transpose(0, 2, 1, 3).reshape(n * h, n * w)
    return (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: str, image: np.ndarray) -> None:
    """An 8-bit greyscale PNG, written with the standard library."""
    height, width = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="Decode a latent grid with an exported vaelab decoder.")
    parser.add_argument("decoder", help="a file from `vaelab export --part decoder`")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--n", type=int, default=15, help="codes per side of the grid")
    args = parser.parse_args()
    session = ort.InferenceSession(args.decoder, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map  # written by vaelab export
    z = latent_grid(args.n, int(meta["latent_dim"]))
    (images,) = session.run(["mean"], {"z": z})
    write_png(args.out, tile(images, args.n))
    print(f"decoded {len(z)} codes with {args.decoder} ({meta.get('source', '?')}) into {args.out}")


if __name__ == "__main__":
    main()
