"""Data sets larger than memory: raw IDX and .npy images used through numpy.memmap, batched as in memory."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from tests.conftest import IDX_NAMES, tiny_config, write_fake_idx_set
from vaelab import VaelabError
from vaelab.config import apply_overrides
from vaelab.data import Batches, binarize_fixed, datasets, load_dataset, write_idx
from vaelab.data.idx import memmap_idx, read_idx
from vaelab.train import make_batches


def _anonymous_kb() -> int:
    """Resident anonymous memory (what a copy in memory would take; mapped file pages are page cache)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon"))


def _epochs(dataset, binarize="none", seed=0):
    batches = Batches(dataset.x_train, dataset.y_train, batch_size=7, binarize=binarize, training=True)
    return list(batches.epoch(torch.Generator().manual_seed(seed)))


def test_memmap_idx_is_the_file_read_lazily(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "images", images)
    mapped = memmap_idx(tmp_path / "images")
    assert isinstance(mapped, np.memmap) and mapped.shape == (50, 28, 28)
    np.testing.assert_array_equal(mapped, read_idx(tmp_path / "images"))
    mapped[0] = 0  # copy-on-write: the file is never changed
    np.testing.assert_array_equal(read_idx(tmp_path / "images"), images)


def test_memmap_idx_refuses_gzip_truncated_and_wide_files(tmp_path):
    images = np.zeros((4, 3, 3), dtype=np.uint8)
    write_idx(tmp_path / "raw", images)
    (tmp_path / "raw.gz").write_bytes(gzip.compress((tmp_path / "raw").read_bytes()))
    with pytest.raises(VaelabError, match="gzip"):
        memmap_idx(tmp_path / "raw.gz")
    (tmp_path / "short").write_bytes((tmp_path / "raw").read_bytes()[:-5])
    with pytest.raises(VaelabError, match="truncated"):
        memmap_idx(tmp_path / "short")
    header = bytes([0, 0, 0x0C, 1]) + (2).to_bytes(4, "big")
    (tmp_path / "wide").write_bytes(header + bytes(8))
    with pytest.raises(VaelabError, match="only uint8"):
        memmap_idx(tmp_path / "wide")


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_memory_mapped_idx_folder_gives_the_same_batches(tmp_path, binarize):
    folder = write_fake_idx_set(tmp_path / "data", n_train=60, n_test=20)
    in_memory = load_dataset(str(folder), mmap=False)
    mapped = load_dataset(str(folder), mmap=True)
    assert mapped.memory_mapped and not in_memory.memory_mapped
    assert torch.equal(mapped.y_train, in_memory.y_train)
    for a, b in zip(_epochs(mapped, binarize), _epochs(in_memory, binarize)):
        assert torch.equal(a, b)
    # fixed binarisation of a mapped split: the same images as in memory
    assert torch.equal(binarize_fixed(mapped.x_test), binarize_fixed(in_memory.x_test))


def test_memory_mapped_npy_folder_gives_the_same_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "npy"
    folder.mkdir()
    arrays = {
        "x_train": rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8),  # N x H x W x C
        "y_train": rng.integers(0, 10, 40),
        "x_test": rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 10),
    }
    for key, value in arrays.items():
        np.save(folder / f"{key}.npy", value)
    mapped = load_dataset(str(folder), mmap=True)
    in_memory = load_dataset(str(folder), mmap=False)
    assert mapped.memory_mapped and mapped.image_shape == (1, 28, 28)
    for a, b in zip(_epochs(mapped), _epochs(in_memory)):
        assert torch.equal(a, b)
    np.save(folder / "x_train.npy", arrays["x_train"].astype(np.float32) / 255)
    with pytest.raises(VaelabError, match="only uint8"):
        load_dataset(str(folder), mmap=True)


def test_gzip_files_are_read_into_memory_even_when_mapping_is_asked(tmp_path):
    folder = write_fake_idx_set(tmp_path / "data")
    for name in IDX_NAMES:
        path = folder / name
        (folder / (name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert not load_dataset(str(folder), mmap=True).memory_mapped


def test_large_raw_files_are_mapped_automatically(tmp_path, monkeypatch):
    folder = write_fake_idx_set(tmp_path / "data", n_train=50)
    assert not load_dataset(str(folder)).memory_mapped  # small: read into memory
    monkeypatch.setattr(datasets, "MMAP_AUTO_BYTES", 1000)
    assert load_dataset(str(folder)).memory_mapped
    assert not load_dataset(str(folder), mmap=False).memory_mapped


def test_a_mapped_data_set_is_not_read_into_memory(tmp_path):
    n = 100_000  # 78 MB of images
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / IDX_NAMES[0], rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(folder / IDX_NAMES[1], rng.integers(0, 10, n, dtype=np.uint8))
    write_idx(folder / IDX_NAMES[2], rng.integers(0, 256, (10, 28, 28), dtype=np.uint8))
    write_idx(folder / IDX_NAMES[3], rng.integers(0, 10, 10, dtype=np.uint8))
    before = _anonymous_kb()
    dataset = load_dataset(str(folder), mmap=True)
    batches = Batches(dataset.x_train, batch_size=128)
    x = next(batches.epoch(torch.Generator().manual_seed(0)))
    assert x.shape == (128, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert _anonymous_kb() - before < 20_000, "the images were read into memory"


def test_data_mmap_config_reaches_the_loader(tmp_path):
    folder = write_fake_idx_set(tmp_path / "data", n_train=300, n_test=20)
    overrides = [f"data.name={str(folder)!r}", "data.validation_size=20", "data.train_limit=0", "data.test_limit=0"]
    dataset, batches = make_batches(apply_overrides(tiny_config(), [*overrides, "data.mmap=always"]))
    assert dataset.memory_mapped and len(batches["train"].images) == 280
    dataset, _ = make_batches(apply_overrides(tiny_config(), [*overrides, "data.mmap=never"]))
    assert not dataset.memory_mapped
    with pytest.raises(VaelabError, match="data.mmap"):
        apply_overrides(tiny_config(), ["data.mmap=sometimes"])


def test_fixed_binarisation_does_not_depend_on_its_chunking():
    images = torch.randint(0, 256, (2500, 1, 5, 5), dtype=torch.uint8)
    assert torch.equal(binarize_fixed(images, chunk=333), binarize_fixed(images, chunk=10_000))


def test_training_from_a_mapped_data_set_equals_training_in_memory(tmp_path):
    from vaelab.train import Trainer

    folder = write_fake_idx_set(tmp_path / "data", n_train=200, n_test=40)
    base = [f"data.name={str(folder)!r}", "data.validation_size=40", "data.train_limit=0", "data.test_limit=0"]
    base += ["data.binarize=dynamic", "train.epochs=1"]
    results = []
    for mode in ("always", "never"):
        trainer = Trainer(apply_overrides(tiny_config(), [*base, f"data.mmap={mode}"]), tmp_path / mode, figures=False)
        assert trainer.dataset.memory_mapped == (mode == "always")
        results.append(trainer.fit(progress=False))
    assert results[0] == results[1]
