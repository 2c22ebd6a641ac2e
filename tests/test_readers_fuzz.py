"""Property-based tests of the readers of user files: whatever the bytes, only VaelabError comes out.

Each property either gets a value back (checked for what it promises) or a VaelabError; any other
exception fails the test. Examples are bounded so the file runs in seconds.
"""

from __future__ import annotations

import gzip
import io
import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaelab import VaelabError
from vaelab.config import RunConfig, apply_overrides
from vaelab.data import load_dataset, parse_idx, read_idx
from vaelab.data.datasets import ImageDataset, load_npz
from vaelab.data.idx import memmap_idx

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def _only_vaelab_errors(call):
    """call()'s value, or None if it raised VaelabError (any other exception propagates)."""
    try:
        return call()
    except VaelabError as err:
        assert str(err) and "\n" not in str(err).strip()  # one line for the CLI
        return None


def _mutated(content: bytes, data) -> bytes:
    """``content`` with a few bytes flipped, cut short or extended."""
    content = bytearray(content)
    for _ in range(data.draw(st.integers(0, 3), label="flips")):
        if content:
            i = data.draw(st.integers(0, len(content) - 1), label="at")
            content[i] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(content)), label="cut")
    return bytes(content[:cut]) + data.draw(st.binary(max_size=8), label="tail")


# --- IDX -----------------------------------------------------------------------------------------

_IDX_TYPES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]


@st.composite
def idx_files(draw) -> bytes:
    """IDX-like bytes: a well-formed header (any type, 1-4 dimensions up to 2^32 - 1), a body of
    the right length or not, sometimes gzipped, sometimes mutated, sometimes pure noise."""
    kind = draw(st.sampled_from(["noise", "header", "gzip"]))
    if kind == "noise":
        return draw(st.binary(max_size=64))
    ndim = draw(st.integers(1, 4))
    dims = draw(st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), min_size=ndim, max_size=ndim))
    header = bytes([0, 0, draw(st.sampled_from(_IDX_TYPES)), ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    body = draw(st.binary(max_size=300))
    content = header + body
    if draw(st.booleans()):
        content = _mutated(content, draw(st.data()))
    return gzip.compress(content) if kind == "gzip" else content


@FUZZ
@given(content=idx_files())
def test_idx_bytes_give_an_array_or_vaelab_error(scratch, content):
    path = scratch / "fuzz-idx"
    path.write_bytes(content)
    for read in (lambda: read_idx(path), lambda: parse_idx(content), lambda: memmap_idx(path)):
        array = _only_vaelab_errors(read)
        if array is not None:  # what the header declared, in full
            assert array.size == math.prod(array.shape) and 1 <= array.ndim <= 4


@FUZZ
@given(data=st.data())
def test_mutated_gzip_idx_gives_an_array_or_vaelab_error(scratch, data):
    values = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    raw = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in values.shape) + values.tobytes()
    path = scratch / "fuzz-idx.gz"
    path.write_bytes(_mutated(gzip.compress(raw), data))
    array = _only_vaelab_errors(lambda: read_idx(path))
    if array is not None:  # gzip's CRC held: damage never passes as other images
        np.testing.assert_array_equal(array, values)


# --- .npz ----------------------------------------------------------------------------------------


def _valid_npz(**change) -> bytes:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 6),
        "x_test": rng.random((3, 4, 4), dtype=np.float32),
        "y_test": rng.integers(0, 10, 3),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **dict(arrays, **change))
    return buffer.getvalue()


def _npy_header(shape, descr: str, fortran: bool = False) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}).encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@st.composite
def npz_files(draw) -> bytes:
    kind = draw(st.sampled_from(["noise", "mutated", "compressed", "member"]))
    if kind == "noise":
        return draw(st.binary(max_size=64))
    if kind == "mutated":
        return _mutated(_valid_npz(), draw(st.data()))
    if kind == "compressed":  # a deflated archive, mutated: the damage is inside the compressed stream
        valid = zipfile.ZipFile(io.BytesIO(_valid_npz()))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in valid.namelist():
                archive.writestr(name, valid.read(name))
        return _mutated(buffer.getvalue(), draw(st.data()))
    # one member replaced by a hand-made .npy: any shape (even absurd), dtype, length
    key = draw(st.sampled_from(["x_train", "y_train", "x_test", "y_test"]))
    shape = draw(st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**62)), max_size=4))
    descr = draw(st.sampled_from(["|u1", "<f4", ">f8", "<i8", "|b1", "<c8", "|O", "|V0", "<U3", "<M8[s]", "|u1x"]))
    member = _npy_header(shape, descr, draw(st.booleans())) + draw(st.binary(max_size=200))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            if name == key:
                archive.writestr(f"{name}.npy", member)
            else:
                archive.writestr(f"{name}.npy", zipfile.ZipFile(io.BytesIO(_valid_npz())).read(f"{name}.npy"))
    return buffer.getvalue()


@FUZZ
@given(content=npz_files())
def test_npz_bytes_give_a_dataset_or_vaelab_error(scratch, content):
    path = scratch / "fuzz.npz"
    path.write_bytes(content)
    dataset = _only_vaelab_errors(lambda: load_npz(path, "fuzz"))
    if dataset is not None:
        assert isinstance(dataset, ImageDataset) and len(dataset.x_train) and len(dataset.x_test)


@FUZZ
@given(data=st.data())
def test_npy_folder_gives_a_dataset_or_vaelab_error(scratch, data):
    folder = scratch / "npy"
    folder.mkdir(exist_ok=True)
    valid = zipfile.ZipFile(io.BytesIO(_valid_npz()))
    broken = data.draw(st.sampled_from(["x_train", "y_train", "x_test", "y_test"]))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        content = valid.read(f"{key}.npy")
        (folder / f"{key}.npy").write_bytes(_mutated(content, data) if key == broken else content)
    _only_vaelab_errors(lambda: load_dataset(str(folder), mmap=data.draw(st.sampled_from([None, True, False]))))


# --- config --------------------------------------------------------------------------------------

_FIELDS = {section: list(values) for section, values in RunConfig().to_dict().items()}
_EVERY_KEY = [(section, key) for section, keys in _FIELDS.items() for key in keys]

# adversarial values of each type: non-finite and extreme floats, integers beyond 64 bits, strings no
# path or file can hold, next to ordinary ones
_floats = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0, -1.0]), st.floats(), st.floats(0, 2)
)
_ints = st.one_of(st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), -1, 10**400]), st.integers(), st.integers(0, 50))
_texts = st.one_of(st.text(max_size=10), st.sampled_from(["\x00", "runs/a\x00b", "caf\udce9", "cuda:7", "cuda:x", ""]))
_toml_scalars = st.one_of(st.booleans(), _ints, _floats, _texts)
_toml_values = st.recursive(_toml_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def _values_like(default):
    """Values of the type a config key holds (and, a quarter of the time, of any type)."""
    if isinstance(default, bool):
        typed = st.booleans()
    elif isinstance(default, int):
        typed = _ints
    elif isinstance(default, float):
        typed = _floats
    elif isinstance(default, str):
        typed = st.one_of(st.just(default), _texts)
    else:  # the lists: model.hidden (ints), model.prior_cov (rows of floats)
        typed = st.lists(st.one_of(_ints, st.lists(_floats, max_size=3)), max_size=3)
    return st.one_of(typed, typed, typed, _toml_values)


@st.composite
def config_tables(draw) -> dict:
    """Tables shaped like a run config: mostly real sections and keys, any values; sometimes not."""
    sections = st.one_of(st.sampled_from(sorted(_FIELDS)), st.text(max_size=6))
    table = {}
    for section in draw(st.lists(sections, max_size=4, unique=True)):
        keys = st.one_of(st.sampled_from(_FIELDS.get(section, ["x"])), st.text(max_size=6))
        table[section] = draw(st.dictionaries(keys, _toml_values, max_size=4))
    if draw(st.booleans()):
        table[draw(st.text(max_size=6))] = draw(_toml_values)
    return table


def _check_config(config: RunConfig) -> None:
    """What a config that validated promises: finite floats, 64-bit integers, text a file can hold, and
    it writes and reads back the same."""

    def check(value):
        if isinstance(value, list):
            for item in value:
                check(item)
        elif isinstance(value, float):
            assert math.isfinite(value)
        elif isinstance(value, int):
            assert -(2**63) <= value < 2**63
        elif isinstance(value, str):
            assert "\x00" not in value
            value.encode("utf-8")

    for section in config.to_dict().values():
        for value in section.values():
            check(value)
    assert RunConfig.from_dict(tomllib.loads(config.to_toml())) == config


@pytest.mark.parametrize("section, key", _EVERY_KEY, ids=[f"{s}.{k}" for s, k in _EVERY_KEY])
def test_every_key_validates_or_vaelab_error(section, key):
    """Each key, alone, in a table and as a --set override: any value validates or is a VaelabError."""

    @settings(max_examples=40, deadline=None)
    @given(value=_values_like(RunConfig().to_dict()[section][key]))
    def any_value(value):
        config = _only_vaelab_errors(lambda: RunConfig.from_dict({section: {key: value}}))
        if config is not None:
            _check_config(config)
        as_text = tomli_w.dumps({"v": value})[4:].strip() if _dumpable(value) else str(value)
        config = _only_vaelab_errors(lambda: apply_overrides(RunConfig(), [f"{section}.{key}={as_text}"]))
        if config is not None:
            _check_config(config)

    any_value()


@FUZZ
@given(table=config_tables())
def test_config_tables_validate_or_vaelab_error(scratch, table):
    try:
        text = tomli_w.dumps(table)
    except (TypeError, ValueError, UnicodeEncodeError):
        return  # not expressible as TOML (a NUL key, a lone surrogate): no file can hold it
    path = scratch / "fuzz.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    config = _only_vaelab_errors(lambda: RunConfig.load(path))
    if config is not None:
        _check_config(config)


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace"))))
def test_config_file_bytes_validate_or_vaelab_error(scratch, content):
    path = scratch / "fuzz-bytes.toml"
    path.write_bytes(content)
    config = _only_vaelab_errors(lambda: RunConfig.load(path))
    if config is not None:
        _check_config(config)


@st.composite
def overrides(draw) -> list[str]:
    items = []
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(_FIELDS)))
        key = draw(st.one_of(st.sampled_from(_FIELDS[section]), st.text(max_size=5)))
        value = draw(
            st.one_of(
                st.text(max_size=20),
                _toml_values.map(lambda v: tomli_w.dumps({"v": v})[4:].strip() if _dumpable(v) else "x"),
                st.sampled_from(["nan", "inf", "-inf", "1e999", "-0.0", "[[[[[[", "1" * 40, "10000000000", "0"]),
            )
        )
        items.append(draw(st.sampled_from([f"{section}.{key}={value}", f"{section}.{key}", f"{key}={value}"])))
    return items


def _dumpable(value) -> bool:
    try:
        tomli_w.dumps({"v": value}).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        return False
    return True


@FUZZ
@given(items=overrides())
def test_overrides_validate_or_vaelab_error(items):
    config = _only_vaelab_errors(lambda: apply_overrides(RunConfig(), items))
    if config is not None:
        _check_config(config)
