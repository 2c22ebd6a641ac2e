"""Reader for the IDX format of LeCun's MNIST files (raw or gzip-compressed).

Format: two zero bytes, a type byte, a dimension count byte, one big-endian uint32 per dimension,
then the values in row-major order, big-endian. Every one of those facts is checked, so a corrupt,
truncated or mislabelled file fails here with a message instead of producing garbage images.

A gzip file is decompressed as a stream, never beyond the length its header declares, and that
length is checked against the memory available before the values are read: a small file that
would inflate to terabytes costs nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vaelab.core.memory import require_memory
from vaelab.errors import VaelabError
from vaelab.io import require_regular_file

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


@contextmanager
def _reading(source: Path | bytes, name: str) -> Iterator[BinaryIO]:
    """The content of a file (or of bytes) as a stream, decompressed as it is read if it is gzip
    (recognised by its magic bytes, not a file name); read and gzip errors become VaelabError."""
    if isinstance(source, bytes):
        handle: BinaryIO = io.BytesIO(source)
    else:
        require_regular_file(source, "data file")
        try:
            handle = open(source, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise VaelabError(f"data file {name} does not exist") from None
        except OSError as err:
            raise VaelabError(f"cannot read data file {name}: {err}") from None
    compressed = False
    with handle:
        try:
            compressed = handle.read(2) == GZIP_MAGIC
            handle.seek(0)
            if not compressed:
                yield handle
                return
            with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                yield stream  # type: ignore[misc]
        except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            if compressed:
                raise VaelabError(
                    f"{name} is corrupt or truncated gzip ({err}); delete it and fetch it again"
                ) from None
            raise VaelabError(f"cannot read data file {name}: {err}") from None


def content_md5(source: Path | bytes, name: str) -> str:
    """MD5 of the (decompressed) content, read in chunks, so a file of any size is never held whole."""
    digest = hashlib.md5()
    with _reading(source, name) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def idx_layout(head: bytes, source: str = "<bytes>") -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, header length, total length in bytes) that the first bytes of an IDX file declare."""
    if len(head) < 4:
        raise VaelabError(f"{source} is not an IDX file: only {len(head)} bytes")
    zero0, zero1, type_code, ndim = head[0], head[1], head[2], head[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_TYPES or not 1 <= ndim <= 4:
        raise VaelabError(
            f"{source} is not an IDX file: bad magic number {head[:4].hex()} "
            "(expected 0000 then a type byte 08/09/0b/0c/0d/0e then 1-4 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(head) < header:
        raise VaelabError(f"{source} is truncated: the IDX header needs {header} bytes, file has {len(head)}")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if any(d == 0 for d in shape):
        raise VaelabError(f"{source} has an empty dimension in its IDX header: shape {shape}")
    dtype = _IDX_TYPES[type_code]
    return dtype, shape, header, header + math.prod(shape) * dtype.itemsize  # Python ints: no overflow


def _wrong_length(source: str, shape: tuple[int, ...], expected: int, actual: int) -> VaelabError:
    what = "truncated" if actual < expected else "longer than its header says"
    has = f"{actual} bytes" if actual < expected else f"more than {expected} bytes"
    return VaelabError(
        f"{source} is {what}: header says shape {shape} ({expected} bytes), file has {has}; "
        "delete it and fetch it again"
    )


def parse_idx_header(content: bytes, size: int, source: str = "<bytes>") -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header length) from the first bytes of an IDX file of ``size`` bytes, validating
    magic number, dimensions and length."""
    dtype, shape, header, expected = idx_layout(content[: min(len(content), size)], source)
    if size != expected:
        raise _wrong_length(source, shape, expected, size)
    return dtype, shape, header


def _read_idx_stream(stream: BinaryIO, source: str) -> np.ndarray:
    head = stream.read(4)
    if len(head) == 4:
        head += stream.read(4 * head[3])
    dtype, shape, header, expected = idx_layout(head, source)
    require_memory(expected, f"{source} (an IDX file of shape {shape})")
    values = np.empty(shape, dtype)
    got = stream.readinto(values.reshape(-1).view(np.uint8))
    if header + got < expected:
        raise _wrong_length(source, shape, expected, header + got)
    if stream.read(1):
        raise _wrong_length(source, shape, expected, expected + 1)
    return values.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else values


def parse_idx(content: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (raw or gzip) into a numpy array, validating magic number, dimensions and length."""
    with _reading(bytes(content), source) as stream:
        return _read_idx_stream(stream, source)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw)."""
    with _reading(Path(path), str(path)) as stream:
        return _read_idx_stream(stream, str(path))


def is_raw_idx(path: Path) -> bool:
    """True for an uncompressed IDX file (one that can be memory-mapped)."""
    try:
        require_regular_file(path, "data file")
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x00\x00"
    except (OSError, VaelabError):
        return False


def memmap_idx(path: Path) -> np.ndarray:
    """An uncompressed single-byte IDX file (uint8 or int8) as a read-only-on-disk ``numpy.memmap``:
    nothing is read until it is indexed. Copy-on-write, so the array is writable in memory (torch
    wants that) while the file never changes."""
    path = Path(path)
    require_regular_file(path, "data file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4 + 4 * 4)
        size = path.stat().st_size
    except FileNotFoundError:
        raise VaelabError(f"data file {path} does not exist") from None
    except OSError as err:
        raise VaelabError(f"cannot read data file {path}: {err}") from None
    if head[:2] == GZIP_MAGIC:
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
