"""Reader for the IDX format of LeCun's MNIST files (raw or gzip-compressed).

Format: two zero bytes, a type byte, a dimension count byte, one big-endian uint32 per dimension,
then the values in row-major order, big-endian. Every one of those facts is checked, so a corrupt,
truncated or mislabelled file fails here with a message instead of producing garbage images.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from vaelab.errors import VaelabError

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed if it is gzip (recognised by its magic bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VaelabError(f"data file {path} does not exist") from None
    except OSError as err:
        raise VaelabError(f"cannot read data file {path}: {err}") from None
    return gunzip_if_compressed(raw, str(path))


def gunzip_if_compressed(raw: bytes, source: str) -> bytes:
    """Decompress gzip content (recognised by its magic bytes, not a file name); pass anything else through."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise VaelabError(f"{source} is corrupt or truncated gzip ({err}); delete it and fetch it again") from None


def parse_idx_header(content: bytes, size: int, source: str = "<bytes>") -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header length) from the first bytes of an IDX file of ``size`` bytes, validating
    magic number, dimensions and length."""
    if size < 4 or len(content) < 4:
        raise VaelabError(f"{source} is not an IDX file: only {size} bytes")
    zero0, zero1, type_code, ndim = content[0], content[1], content[2], content[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_TYPES or not 1 <= ndim <= 4:
        raise VaelabError(
            f"{source} is not an IDX file: bad magic number {content[:4].hex()} "
            "(expected 0000 then a type byte 08/09/0b/0c/0d/0e then 1-4 dimensions)"
        )
    header = 4 + 4 * ndim
    if size < header or len(content) < header:
        raise VaelabError(f"{source} is truncated: the IDX header needs {header} bytes, file has {size}")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if any(d == 0 for d in shape):
        raise VaelabError(f"{source} has an empty dimension in its IDX header: shape {shape}")
    dtype = _IDX_TYPES[type_code]
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise VaelabError(
            f"{source} is {what}: header says shape {shape} ({expected} bytes), file has {size} bytes; "
            "delete it and fetch it again"
        )
    return dtype, shape, header


def parse_idx(content: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a numpy array, validating magic number, dimensions and length."""
    dtype, shape, header = parse_idx_header(content, len(content), source)
    array = np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else array


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw)."""
    return parse_idx(read_bytes(path), str(path))


def is_raw_idx(path: Path) -> bool:
    """True for an uncompressed IDX file (one that can be memory-mapped)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x00\x00"
    except OSError:
        return False


def memmap_idx(path: Path) -> np.ndarray:
    """An uncompressed single-byte IDX file (uint8 or int8) as a read-only-on-disk ``numpy.memmap``:
    nothing is read until it is indexed. Copy-on-write, so the array is writable in memory (torch
    wants that) while the file never changes."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4 + 4 * 4)
        size = path.stat().st_size
    except FileNotFoundError:
        raise VaelabError(f"data file {path} does not exist") from None
    except OSError as err:
        raise VaelabError(f"cannot read data file {path}: {err}") from None
    if head[:2] == b"\x1f\x8b":
        raise VaelabError(f"{path} is gzip-compressed and cannot be memory-mapped; decompress it first (gunzip)")
    dtype, shape, header = parse_idx_header(head, size, str(path))
    if dtype.itemsize != 1:
        raise VaelabError(f"{path} holds {dtype} values; only uint8 / int8 IDX files are memory-mapped")
    return np.memmap(path, dtype=dtype, mode="c", offset=header, shape=shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as raw IDX (used to register and test data sets)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    Path(path).write_bytes(header + array.tobytes())
