"""Labelled image data sets held in memory as uint8 tensors, and the registry that finds them.

``load_dataset("mnist")`` reads the copy shipped inside the package; ``"fashion-mnist"`` is looked
for in ``data_dir``, ``$VAELAB_DATA``, Debian's ``/usr/share/datasets/fashion-mnist`` and the user
cache, then downloaded from the official mirror. A folder of IDX files or an ``.npz`` file can be
registered under a name, or passed directly as the data set's name; so can a folder holding
``x_train.npy``, ``y_train.npy``, ``x_test.npy`` and ``y_test.npy``.

Data sets larger than memory: uncompressed IDX files and ``.npy`` files of uint8 images can be used
through ``numpy.memmap`` (``load_dataset(..., mmap=True)``, ``data.mmap = "always"``, and by default
for files of at least 1 GiB). The images then stay on disk; batches are built by the same indexing,
which reads only the rows of each batch (the labels are read into memory).
"""

from __future__ import annotations

import io
import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from vaelab.core.memory import require_memory
from vaelab.data.factors import FactorImages
from vaelab.data.idx import is_raw_idx, memmap_idx, read_idx
from vaelab.data.sources import (
    SPLIT_FILES,
    RemoteFiles,
    cache_dir,
    download,
    find_idx_file,
    folder_has_idx_set,
    verify_md5,
)
from vaelab.errors import VaelabError
from vaelab.io import require_regular_file

MNIST_FILES = RemoteFiles(
    md5={  # the official sums of the uncompressed files (see data/mnist/MD5SUMS.uncompressed)
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist", "https://storage.googleapis.com/cvdf-datasets/mnist"),
)
FASHION_MNIST_FILES = RemoteFiles(
    md5={  # uncompressed content of the release (zalandoresearch/fashion-mnist, data/fashion)
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",),
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NPY_FILES = tuple(f"{key}.npy" for key in NPZ_ARRAYS)

# What reading a damaged .npy raises: numpy's header parser lets SyntaxError and TokenError through.
_UNREADABLE_NPY = (OSError, EOFError, ValueError, SyntaxError, tokenize.TokenError)
# Memory-map raw files at least this big when the caller leaves it to us (mmap=None).
MMAP_AUTO_BYTES = 1 << 30
# The loading policy of the load_dataset call in progress: True, False, or None (by size).
_MMAP: ContextVar[bool | None] = ContextVar("vaelab_mmap", default=None)


def memory_map(path: Path, raw: bool) -> bool:
    """Whether to memory-map ``path`` (a raw file, if ``raw``) under the current policy."""
    policy = _MMAP.get()
    if not raw or policy is False:
        return False
    return policy is True or path.stat().st_size >= MMAP_AUTO_BYTES


@dataclass
class ImageDataset:
    """Train and test images (uint8, N x C x H x W) with integer labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    class_names: tuple[str, ...] = ()
    memory_mapped: bool = False  # images read from disk on demand (numpy.memmap), not held in memory
    # a data set made from known factors of variation: each image's factor classes (N x K) and the table
    # of all images by their factors, which the disentanglement metrics sample from
    factors_train: torch.Tensor | None = None
    factors_test: torch.Tensor | None = None
    ground_truth: FactorImages | None = None

    def __post_init__(self) -> None:
        where = f"{self.name} ({self.source})"
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise VaelabError(
                    f"{where}: {split} images must be uint8 N x C x H x W, got {x.dtype} {tuple(x.shape)}"
                )
            if len(x) == 0:
                raise VaelabError(f"{where}: the {split} split has no images")
            if 0 in x.shape[1:]:
                raise VaelabError(f"{where}: the {split} images have an empty dimension: {tuple(x.shape)}")
            if x.shape[1] not in (1, 3):  # the figures draw grey or RGB images only
                raise VaelabError(
                    f"{where}: the {split} images have {x.shape[1]} channels (shape N x C x H x W = "
                    f"{tuple(x.shape)}); vaelab takes 1 (grey) or 3 (RGB) channels"
                )
            if y.dim() != 1 or len(y) != len(x):
                raise VaelabError(f"{where}: {len(x)} {split} images but {tuple(y.shape)} labels; they must match")
            factors = getattr(self, f"factors_{split}")
            if factors is not None and (factors.dim() != 2 or len(factors) != len(x)):
                raise VaelabError(f"{where}: {len(x)} {split} images but factors of shape {tuple(factors.shape)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise VaelabError(
                f"{where}: train images are {tuple(self.x_train.shape[1:])} but test images "
                f"{tuple(self.x_test.shape[1:])}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def splits(
        self, validation_size: int, train_limit: int = 0, test_limit: int = 0
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """train / validation (the last ``validation_size`` training images, a fixed split) / test.

        ``train_limit`` / ``test_limit`` (0 = no limit) keep only the first images of a split.
        """
        rows = self._split_rows(validation_size, train_limit, test_limit)
        return {split: (x[part], y[part]) for split, (x, y, part) in rows.items()}

    def factor_splits(
        self, validation_size: int, train_limit: int = 0, test_limit: int = 0
    ) -> dict[str, torch.Tensor | None]:
        """The factor classes of the images :meth:`splits` gives (None for a data set without factors)."""
        rows = self._split_rows(validation_size, train_limit, test_limit)
        factors = {"train": self.factors_train, "validation": self.factors_train, "test": self.factors_test}
        return {split: None if factors[split] is None else factors[split][part] for split, (_, _, part) in rows.items()}

    def _split_rows(self, validation_size: int, train_limit: int, test_limit: int) -> dict[str, tuple]:
        n = len(self.x_train)
        if not 0 <= validation_size < n:
            raise VaelabError(f"data.validation_size = {validation_size} must be smaller than the {n} training images")
        cut = n - validation_size
        train_end = min(cut, train_limit) if train_limit else cut
        test_end = test_limit or len(self.x_test)
        return {
            "train": (self.x_train, self.y_train, slice(0, train_end)),
            "validation": (self.x_train, self.y_train, slice(cut, n)),
            "test": (self.x_test, self.y_test, slice(0, test_end)),
        }


Loader = Callable[[Path | None], ImageDataset]


@dataclass
class RegistryEntry:
    name: str
    description: str
    load: Loader
    locate: Callable[[Path | None], str | None]  # where it would be read from now, or None if not present


_REGISTRY: dict[str, RegistryEntry] = {}


def register(
    name: str, load: Loader, description: str = "", locate: Callable[[Path | None], str | None] | None = None
) -> None:
    """Make ``load(data_dir)`` available as ``load_dataset(name)``."""
    _REGISTRY[name] = RegistryEntry(name, description, load, locate or (lambda _dir: "registered"))


def register_idx_folder(name: str, folder: str | Path, class_names: tuple[str, ...] = ()) -> None:
    folder = Path(folder)
    register(
        name,
        lambda _dir: load_idx_folder(folder, name, class_names=class_names),
        f"IDX files in {folder}",
        lambda _dir: str(folder) if folder_has_idx_set(folder) else None,
    )


def register_npz(name: str, path: str | Path) -> None:
    path = Path(path)
    register(
        name, lambda _dir: load_npz(path, name), f"npz file {path}", lambda _dir: str(path) if path.is_file() else None
    )


def registered_names() -> list[str]:
    return list(_REGISTRY)


def load_dataset(name: str, data_dir: str | Path | None = None, mmap: bool | None = None) -> ImageDataset:
    """A registered data set by name, or a folder of IDX or ``.npy`` files / an ``.npz`` file by path.

    ``mmap``: True memory-maps every uncompressed IDX / ``.npy`` image file (gzip and ``.npz`` are
    read into memory), False reads everything into memory, None (default) maps files of at least
    ``MMAP_AUTO_BYTES``.
    """
    data_dir = Path(data_dir) if data_dir else None
    token = _MMAP.set(mmap)
    try:
        if name in _REGISTRY:
            return _REGISTRY[name].load(data_dir)
        path = Path(name).expanduser()
        if path.suffix == ".npz":
            return load_npz(path, path.stem)
        if path.is_dir():
            if not folder_has_idx_set(path) and all((path / f).is_file() for f in NPY_FILES):
                return load_npy_folder(path, path.name)
            return load_idx_folder(path, path.name)
    finally:
        _MMAP.reset(token)
    raise VaelabError(
        f"unknown data set {name!r}: use one of {', '.join(_REGISTRY)}, a folder of IDX files or of "
        f"{', '.join(NPY_FILES)}, or an .npz file holding x_train, y_train, x_test, y_test"
    )


def describe_datasets(data_dir: str | Path | None = None) -> list[dict[str, str]]:
    """One row per registered data set: name, description, and where it is found (or 'not found')."""
    data_dir = Path(data_dir) if data_dir else None
    rows = []
    for entry in _REGISTRY.values():
        where = entry.locate(data_dir)
        rows.append({"name": entry.name, "description": entry.description, "location": where or "not found"})
    return rows


# --- readers -------------------------------------------------------------------------------------


def load_idx_folder(
    folder: Path, name: str, md5: dict[str, str] | None = None, class_names: tuple[str, ...] = (), source: str = ""
) -> ImageDataset:
    folder = Path(folder)
    arrays = []
    for file_name in SPLIT_FILES:
        path = find_idx_file(folder, file_name)
        if path is None:
            raise VaelabError(f"{folder} lacks {file_name} (or {file_name}.gz), one of the four IDX files of {name}")
        if md5:
            verify_md5(path, md5[file_name])
        images = "images" in file_name
        arrays.append(memmap_idx(path) if images and memory_map(path, is_raw_idx(path)) else read_idx(path))
    x_train, y_train, x_test, y_test = arrays
    return _from_arrays(name, x_train, y_train, x_test, y_test, source or str(folder), class_names)


def load_npy_folder(folder: Path, name: str) -> ImageDataset:
    """x_train.npy, y_train.npy, x_test.npy, y_test.npy (images memory-mapped under the mmap policy)."""
    folder = Path(folder)
    arrays = []
    for file_name in NPY_FILES:
        path = folder / file_name
        mapped = file_name.startswith("x_") and memory_map(path, raw=True)
        try:
            # mapped first even when read into memory: mapping checks the header's size against the file's
            array = np.load(path, mmap_mode="c" if mapped else "r", allow_pickle=False)
        except FileNotFoundError:
            raise VaelabError(f"{folder} lacks {file_name}, one of the four .npy files of {name}") from None
        except _UNREADABLE_NPY as err:
            raise VaelabError(f"{path} is not a readable .npy file ({err})") from None
        if not isinstance(array, np.ndarray):
            raise VaelabError(f"{path} is not a .npy file (it holds {type(array).__name__})")
        if not mapped:
            require_memory(array.nbytes, f"{path} (an array of shape {array.shape})")
            array = np.array(array)
        arrays.append(array)
    return _from_arrays(name, *arrays, source=str(folder), class_names=())


def load_npz(path: Path, name: str) -> ImageDataset:
    path = Path(path)
    require_regular_file(path, "data file")
    try:
        with zipfile.ZipFile(path) as archive:
            missing = [key for key in NPZ_ARRAYS if f"{key}.npy" not in archive.namelist()]
            if missing:
                raise VaelabError(f"{path} lacks the arrays {', '.join(missing)} (needs {', '.join(NPZ_ARRAYS)})")
            arrays = [npz_member(archive, key, path) for key in NPZ_ARRAYS]
    except FileNotFoundError:
        raise VaelabError(f"data file {path} does not exist") from None
    except (*_UNREADABLE_NPY, NotImplementedError, zipfile.BadZipFile, zlib.error) as err:
        raise VaelabError(f"{path} is not a readable .npz file ({err})") from None
    return _from_arrays(name, *arrays, source=str(path), class_names=())


def npz_member(archive: zipfile.ZipFile, key: str, path: Path) -> np.ndarray:
    """One array of an .npz archive, its sizes checked before they are trusted: the member's against
    the memory available, the .npy header's shape against the bytes the member holds."""
    info = archive.getinfo(f"{key}.npy")
    where = f"{path}: {key}"
    if info.flag_bits & 0x1:
        raise VaelabError(f"{where} is encrypted")
    require_memory(info.file_size, f"{where} ({info.file_size} bytes uncompressed)")
    with archive.open(info) as member:
        content = member.read()  # never more than info.file_size
    stream = io.BytesIO(content)
    version = np.lib.format.read_magic(stream)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
        raise VaelabError(f"{where} is a .npy file of version {version}; save it with numpy.savez")
    shape, fortran_order, dtype = read_header[version](stream)
    if dtype.kind not in "biuf":
        raise VaelabError(f"{where} holds {dtype} values; images and labels must be numbers")
    expected = math.prod(shape) * dtype.itemsize
    if len(content) - stream.tell() != expected:
        raise VaelabError(
            f"{where} declares shape {shape} of {dtype} ({expected} bytes) but holds "
            f"{len(content) - stream.tell()} bytes; the file is corrupt"
        )
    array = np.frombuffer(content, dtype, math.prod(shape), offset=stream.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def _from_arrays(name, x_train, y_train, x_test, y_test, source, class_names) -> ImageDataset:
    return ImageDataset(
        name=name,
        x_train=_images(x_train, source, "x_train"),
        y_train=_labels(y_train, source, "y_train"),
        x_test=_images(x_test, source, "x_test"),
        y_test=_labels(y_test, source, "y_test"),
        source=source,
        class_names=tuple(class_names),
        memory_mapped=isinstance(x_train, np.memmap),
    )


def _images(array: np.ndarray, source: str, key: str) -> torch.Tensor:
    """N x H x W, N x H x W x C (C in 1, 3) or N x C x H x W; uint8, or finite floats in [0, 1].

    A memory-mapped array stays on disk: the tensor is a view of the mapping (uint8 only).
    """
    mapped = isinstance(array, np.memmap)
    array = np.asarray(array)
    if mapped and array.dtype != np.uint8:
        raise VaelabError(
            f"{source}: {key} is memory-mapped but holds {array.dtype}; only uint8 images can be used from disk "
            "(convert the file to uint8, or load it into memory with mmap=False / data.mmap = 'never')"
        )
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim != 4:
        raise VaelabError(f"{source}: {key} must be N x H x W or N x C x H x W images, got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise VaelabError(f"{source}: {key} must be uint8 or floats in [0, 1], got {array.dtype}")
        finite = np.isfinite(array)
        if not finite.all():
            raise VaelabError(
                f"{source}: {key} holds {array.size - np.count_nonzero(finite)} NaN or infinite values; "
                "images must be finite"
            )
        if array.size and (array.min() < 0 or array.max() > 1):
            raise VaelabError(
                f"{source}: {key} holds floats from {array.min()} to {array.max()}; float images must lie in "
                "[0, 1] (or be stored as uint8 0-255)"
            )
        array = np.rint(array * 255)
    if mapped:
        return torch.from_numpy(array)  # a (possibly strided) view of the copy-on-write mapping
    return torch.from_numpy(np.array(array, dtype=np.uint8, order="C"))  # a writable copy


def _labels(array: np.ndarray, source: str, key: str) -> torch.Tensor:
    array = np.asarray(array)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise VaelabError(f"{source}: {key} must be a 1-D integer array, got {array.dtype} {array.shape}")
    return torch.from_numpy(np.array(array, dtype=np.int64))


# --- the built-in data sets ----------------------------------------------------------------------


def packaged_mnist_dir() -> Path:
    return Path(str(resources.files("vaelab") / "data" / "mnist"))


def _load_mnist(data_dir: Path | None) -> ImageDataset:
    folder = packaged_mnist_dir()
    if not folder_has_idx_set(folder):  # a stripped install: look where Fashion-MNIST is looked for
        return _load_searched("mnist", MNIST_FILES, data_dir, (), tuple(str(d) for d in range(10)))
    return load_idx_folder(folder, "mnist", MNIST_FILES.md5, tuple(str(d) for d in range(10)), "vaelab package")


FASHION_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")


def _search_path(name: str, data_dir: Path | None, extra: tuple[Path, ...]) -> list[Path]:
    folders: list[Path] = []
    for base in (data_dir, Path(os.environ["VAELAB_DATA"]) if os.environ.get("VAELAB_DATA") else None):
        if base is not None:
            folders += [base / name, base]
    return folders + list(extra) + [cache_dir() / name]


def _load_searched(name, remote: RemoteFiles, data_dir, extra, class_names) -> ImageDataset:
    folders = _search_path(name, data_dir, extra)
    for folder in folders:
        if folder_has_idx_set(folder):
            return load_idx_folder(folder, name, remote.md5, class_names)
    target = cache_dir() / name
    try:
        download(remote, target)
    except ConnectionError as err:
        looked = ", ".join(str(f) for f in folders)
        raise VaelabError(
            f"{name} was not found (looked in {looked}) and could not be downloaded ({err}). "
            "Fix one of: pass --data-dir DIR holding the four IDX files; set VAELAB_DATA=DIR; "
            + ("install the Debian package dataset-fashion-mnist; " if name == "fashion-mnist" else "")
            + f"or copy the files into {target}"
        ) from None
    return load_idx_folder(target, name, remote.md5, class_names)


def _locate_searched(name: str, extra: tuple[Path, ...]) -> Callable[[Path | None], str | None]:
    def locate(data_dir: Path | None) -> str | None:
        for folder in _search_path(name, data_dir, extra):
            if folder_has_idx_set(folder):
                return str(folder)
        return None

    return locate


register(
    "mnist",
    _load_mnist,
    "MNIST handwritten digits, 60k train / 10k test, 28x28 (shipped with vaelab)",
    lambda _dir: "vaelab package" if folder_has_idx_set(packaged_mnist_dir()) else None,
)
register(
    "fashion-mnist",
    lambda data_dir: _load_searched(
        "fashion-mnist", FASHION_MNIST_FILES, data_dir, (DEBIAN_FASHION_MNIST,), FASHION_CLASSES
    ),
    "Fashion-MNIST (Zalando), 60k train / 10k test, 28x28",
    _locate_searched("fashion-mnist", (DEBIAN_FASHION_MNIST,)),
)
