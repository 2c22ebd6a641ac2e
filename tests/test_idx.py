"""The IDX reader, and the packaged MNIST with its checksum verification."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tracemalloc
import zlib

import numpy as np
import pytest

from tests.conftest import write_fake_idx_set
from vaelab import VaelabError
from vaelab.data import load_dataset, parse_idx, read_idx, sources, write_idx
from vaelab.data.datasets import MNIST_FILES, load_idx_folder, packaged_mnist_dir
from vaelab.data.sources import SPLIT_FILES, find_idx_file


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def test_write_then_read_raw(tmp_path, images):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, images)
    raw = path.read_bytes()
    # the header is the documented one: 00 00 08 03, then three big-endian uint32 dimensions
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)] == [5, 7, 3]
    assert len(raw) == 16 + images.size
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, images)


def test_read_gzip(tmp_path, images):
    raw = tmp_path / "raw"
    write_idx(raw, images)
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(raw.read_bytes()))
    np.testing.assert_array_equal(read_idx(gz), images)
    # gzip is recognised by its magic bytes, not by the file name
    renamed = tmp_path / "no-suffix"
    shutil.copy(gz, renamed)
    np.testing.assert_array_equal(read_idx(renamed), images)


def test_parse_labels_and_big_endian_types():
    labels = np.arange(10, dtype=np.uint8)
    content = bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + labels.tobytes()
    np.testing.assert_array_equal(parse_idx(content), labels)
    # a big-endian int16 array (type 0x0b) comes back with the right values in native order
    values = np.array([[1, -2, 300], [-32768, 32767, 0]], dtype=">i2")
    content = bytes([0, 0, 0x0B, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + values.tobytes()
    out = parse_idx(content)
    assert out.dtype.byteorder in ("=", "|", "<") and out.dtype.kind == "i" and out.dtype.itemsize == 2
    np.testing.assert_array_equal(out, values.astype(np.int16))


@pytest.mark.parametrize(
    "magic",
    [bytes([1, 0, 0x08, 3]), bytes([0, 0, 0x07, 3]), bytes([0, 0, 0x08, 0]), bytes([0x50, 0x4B, 0x03, 0x04])],
    ids=["nonzero-first-byte", "unknown-type", "zero-dimensions", "zip-file"],
)
def test_bad_magic(tmp_path, images, magic):
    path = tmp_path / "bad"
    write_idx(path, images)
    path.write_bytes(magic + path.read_bytes()[4:])
    with pytest.raises(VaelabError, match="bad magic number") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_too_short_for_magic():
    with pytest.raises(VaelabError, match="not an IDX file"):
        parse_idx(b"\x00\x00", "tiny")


def test_truncated_header():
    with pytest.raises(VaelabError, match="truncated"):
        parse_idx(bytes([0, 0, 0x08, 3]) + (5).to_bytes(4, "big"), "hdr")


def test_truncated_data(tmp_path, images):
    path = tmp_path / "short"
    write_idx(path, images)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(VaelabError, match="truncated") as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "(5, 7, 3)" in message and "fetch it again" in message


def test_longer_than_header(tmp_path, images):
    path = tmp_path / "long"
    write_idx(path, images)
    path.write_bytes(path.read_bytes() + b"\x00\x01")
    with pytest.raises(VaelabError, match="longer than its header says") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_empty_dimension():
    with pytest.raises(VaelabError, match="empty dimension"):
        parse_idx(bytes([0, 0, 0x08, 1]) + (0).to_bytes(4, "big"))


def test_truncated_gzip(tmp_path, images):
    raw = tmp_path / "raw"
    write_idx(raw, images)
    packed = gzip.compress(raw.read_bytes())
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(VaelabError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_checksum(tmp_path, images):
    raw = tmp_path / "raw"
    write_idx(raw, images)
    packed = bytearray(gzip.compress(raw.read_bytes()))
    packed[-8] ^= 0xFF  # the CRC32 of the content
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(VaelabError, match="corrupt or truncated gzip"):
        read_idx(path)


def _gzip_stream(header: bytes, zeros: int) -> bytes:
    """gzip of ``header`` then ``zeros`` zero bytes, compressed piecewise (never held inflated here)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(header)]
    chunk = bytes(1 << 20)
    for start in range(0, zeros, len(chunk)):
        parts.append(packer.compress(chunk[: zeros - start]))
    return b"".join(parts) + packer.flush()


def _peak_traced_bytes(call) -> int:
    """The largest amount of memory Python and numpy held at once while ``call()`` ran."""
    tracemalloc.start()
    try:
        call()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_gzip_bomb_is_never_inflated(tmp_path):
    # the header declares 10 bytes of labels; the gzip stream inflates to 64 MiB
    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(_gzip_stream(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big"), 64 << 20))
    assert path.stat().st_size < 1 << 20

    def read():
        with pytest.raises(VaelabError, match="longer than its header says") as info:
            read_idx(path)
        assert str(path) in str(info.value)

    assert _peak_traced_bytes(read) < 4 << 20


def test_checksum_of_a_gzip_bomb_is_streamed(tmp_path):
    path = tmp_path / "big.gz"
    path.write_bytes(_gzip_stream(b"", 32 << 20))
    digests = []
    assert _peak_traced_bytes(lambda: digests.append(sources.md5_of_content(path))) < 8 << 20
    assert digests == [hashlib.md5(bytes(32 << 20)).hexdigest()]


@pytest.mark.parametrize(
    "dims",
    [(2**16,) * 4, (2**32 - 1,) * 3, (2**32 - 1, 2**32 - 1)],
    ids=["product-2^64-wraps-to-0-in-int64", "product-beyond-2^64", "terabytes"],
)
@pytest.mark.parametrize("packing", ["raw", "gzip"])
def test_absurd_header_is_refused_before_allocating(tmp_path, dims, packing):
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path = tmp_path / "absurd"
    path.write_bytes(gzip.compress(header + bytes(100)) if packing == "gzip" else header)
    with pytest.raises(VaelabError, match="of memory; only .* is available") as info:
        read_idx(path)
    assert str(path) in str(info.value) and str(dims) in str(info.value)


def test_gzip_shorter_than_its_header_says(tmp_path, images):
    raw = tmp_path / "raw"
    write_idx(raw, images)
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(raw.read_bytes()[:-3]))  # a complete gzip stream of too little data
    with pytest.raises(VaelabError, match="truncated") as info:
        read_idx(path)
    assert "(5, 7, 3)" in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope-idx3-ubyte"
    with pytest.raises(VaelabError, match="does not exist") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# --- the packaged MNIST ----------------------------------------------------------------------


def test_packaged_mnist_loads_and_is_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path))
    record = tmp_path / "verified.json"
    assert not record.exists()
    data = load_dataset("mnist")
    assert tuple(data.x_train.shape) == (60000, 1, 28, 28)
    assert tuple(data.x_test.shape) == (10000, 1, 28, 28)
    assert str(data.x_train.dtype) == "torch.uint8" and str(data.x_test.dtype) == "torch.uint8"
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    assert sorted(data.y_train.unique().tolist()) == list(range(10))
    assert sorted(data.y_test.unique().tolist()) == list(range(10))
    assert int(data.x_train.max()) == 255 and int(data.x_train.min()) == 0
    assert data.class_names == tuple(str(d) for d in range(10))
    # the verification ran and was remembered: one entry per file, holding that file's official sum
    verified = json.loads(record.read_text())
    assert sorted(verified.values()) == sorted(MNIST_FILES.md5.values())
    for name in SPLIT_FILES:
        path = find_idx_file(packaged_mnist_dir(), name)
        assert any(key.startswith(str(path.resolve()) + "|") for key in verified), name


def test_packaged_mnist_checks_its_sums(tmp_path, monkeypatch):
    """A wrong expected sum for a packaged file fails: the loader does compare the content."""
    from vaelab.data import datasets

    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path))
    wrong = dict(MNIST_FILES.md5, **{"train-images-idx3-ubyte": "0" * 32})
    monkeypatch.setattr(datasets, "MNIST_FILES", datasets.RemoteFiles(md5=wrong, mirrors=()))
    with pytest.raises(VaelabError, match="checksum"):
        load_dataset("mnist")


def test_tampered_copy_fails_its_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "mnist-copy"
    folder.mkdir()
    for name in SPLIT_FILES:
        shutil.copy(find_idx_file(packaged_mnist_dir(), name), folder)
    # the untouched copy verifies
    assert load_idx_folder(folder, "mnist", md5=MNIST_FILES.md5).x_test.shape[0] == 10000
    # change one label, keep the file a valid IDX file of the right length
    target = folder / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(target.read_bytes()))
    content[100] = (content[100] + 1) % 10
    target.unlink()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bytes(content))
    with pytest.raises(VaelabError, match="checksum") as info:
        load_idx_folder(folder, "mnist", md5=MNIST_FILES.md5)
    assert "t10k-labels-idx1-ubyte" in str(info.value)
    assert MNIST_FILES.md5["t10k-labels-idx1-ubyte"] in str(info.value)
    # without the sums the same folder reads fine: it was the checksum that refused it
    assert load_idx_folder(folder, "mnist").y_test.shape == (10000,)


def test_verification_is_remembered_and_invalidated(tmp_path, monkeypatch):
    """A verified file is not hashed again until its size or modification time changes."""
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    folder = write_fake_idx_set(tmp_path / "fake", n_train=6, n_test=3)
    sums = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in SPLIT_FILES}
    assert load_idx_folder(folder, "fake", md5=sums).x_train.shape[0] == 6
    assert len(json.loads((tmp_path / "cache" / "verified.json").read_text())) == 4

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(sources, "md5_of_content", no_hashing)
    load_idx_folder(folder, "fake", md5=sums)  # all four remembered
    monkeypatch.undo()
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))

    # a changed file (same length, new content and mtime) is hashed again and refused
    target = folder / SPLIT_FILES[1]
    content = bytearray(target.read_bytes())
    content[-1] = (content[-1] + 1) % 10
    target.write_bytes(bytes(content))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    with pytest.raises(VaelabError, match="checksum"):
        load_idx_folder(folder, "fake", md5=sums)
