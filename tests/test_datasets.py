"""The data set registry, npz / IDX-folder data sets, splits, batching and the Fashion-MNIST search."""

from __future__ import annotations

import io
import zipfile
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch

from tests.conftest import IDX_NAMES, write_fake_idx_set
from vaelab import VaelabError
from vaelab.data import Batches, binarize_fixed, datasets, load_dataset, register_idx_folder, register_npz


@pytest.fixture(autouse=True)
def private_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))


def _arrays(n_train=30, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.int64),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.int64),
    }


def _check_same(dataset, arrays):
    assert dataset.x_train.dtype == torch.uint8
    assert tuple(dataset.x_train.shape) == (len(arrays["x_train"]), 1, 28, 28)
    assert dataset.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(dataset.x_train[:, 0].numpy(), arrays["x_train"])
    np.testing.assert_array_equal(dataset.y_train.numpy(), arrays["y_train"])
    np.testing.assert_array_equal(dataset.x_test[:, 0].numpy(), arrays["x_test"])
    np.testing.assert_array_equal(dataset.y_test.numpy(), arrays["y_test"])


# --- npz and IDX folders, registered or by path ------------------------------------------------


def test_register_npz(tmp_path):
    arrays = _arrays()
    path = tmp_path / "digits.npz"
    np.savez(path, **arrays)
    register_npz("my-digits", path)
    assert "my-digits" in datasets.registered_names()
    rows = {row["name"]: row for row in datasets.describe_datasets()}
    assert rows["my-digits"]["location"] == str(path)
    data = load_dataset("my-digits")
    assert data.name == "my-digits"
    _check_same(data, arrays)


def test_npz_path_as_name(tmp_path):
    arrays = _arrays(seed=1)
    path = tmp_path / "other.npz"
    np.savez(path, **arrays)
    data = load_dataset(str(path))
    assert data.name == "other"
    _check_same(data, arrays)


def test_npz_channels_last_and_float_images(tmp_path):
    arrays = _arrays(seed=2)
    nhwc = dict(arrays, x_train=arrays["x_train"][..., None], x_test=arrays["x_test"].astype(np.float32) / 255)
    path = tmp_path / "nhwc.npz"
    np.savez(path, **nhwc)
    _check_same(load_dataset(str(path)), arrays)


def test_register_idx_folder(tmp_path):
    folder = write_fake_idx_set(tmp_path / "idx", n_train=20, n_test=8)
    register_idx_folder("fake-idx", folder, class_names=tuple("abcdefghij"))
    data = load_dataset("fake-idx")
    assert tuple(data.x_train.shape) == (20, 1, 28, 28) and tuple(data.x_test.shape) == (8, 1, 28, 28)
    assert data.class_names == tuple("abcdefghij")
    from vaelab.data import read_idx

    np.testing.assert_array_equal(data.x_train[:, 0].numpy(), read_idx(folder / IDX_NAMES[0]))
    np.testing.assert_array_equal(data.y_test.numpy(), read_idx(folder / IDX_NAMES[3]))


def test_idx_folder_path_as_name(tmp_path):
    folder = write_fake_idx_set(tmp_path / "by-path", n_train=10, n_test=4)
    data = load_dataset(str(folder))
    assert data.name == "by-path"
    assert tuple(data.x_train.shape) == (10, 1, 28, 28) and len(data.y_test) == 4


def test_idx_folder_missing_a_file(tmp_path):
    folder = write_fake_idx_set(tmp_path / "three")
    (folder / IDX_NAMES[3]).unlink()
    with pytest.raises(VaelabError, match="t10k-labels-idx1-ubyte"):
        load_dataset(str(folder))


def test_unknown_name():
    with pytest.raises(VaelabError, match="unknown data set 'no-such-thing'") as info:
        load_dataset("no-such-thing")
    assert "mnist" in str(info.value) and ".npz" in str(info.value)


@pytest.mark.parametrize("missing", ["x_train", "y_test"])
def test_npz_missing_keys(tmp_path, missing):
    arrays = _arrays()
    del arrays[missing]
    path = tmp_path / "partial.npz"
    np.savez(path, **arrays)
    with pytest.raises(VaelabError, match=missing) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"x_train": np.zeros((30, 784), np.uint8)}, "x_train"),  # flat vectors, not images
        ({"y_train": np.zeros((30, 1), np.int64)}, "y_train"),  # labels not 1-D
        ({"y_test": np.zeros(11, np.int64)}, r"12 test images but \(11,\) labels"),
        ({"x_test": np.zeros((12, 14, 14), np.uint8)}, r"but test images \(1, 14, 14\)"),  # another size
        ({"x_train": np.full((30, 28, 28), 2.0, np.float32)}, "x_train"),  # floats outside [0, 1]
        ({"y_train": np.zeros(30, np.float32)}, "y_train"),  # float labels
    ],
    ids=["flat-images", "2d-labels", "label-count", "test-size", "float-range", "float-labels"],
)
def test_npz_wrong_shapes(tmp_path, change, key):
    path = tmp_path / "bad.npz"
    np.savez(path, **dict(_arrays(), **change))
    with pytest.raises(VaelabError, match=key):
        load_dataset(str(path))


def test_npz_missing_or_not_npz(tmp_path):
    with pytest.raises(VaelabError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npz"))
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"this is not a zip archive")
    with pytest.raises(VaelabError, match="not a readable .npz"):
        load_dataset(str(bogus))


def test_npz_refuses_pickled_objects(tmp_path):
    arrays = dict(_arrays(), y_train=np.array([object()] * 30, dtype=object))
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)
    with pytest.raises(VaelabError):
        load_dataset(str(path))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("key", ["x_train", "x_test"])
def test_npz_non_finite_pixels_are_refused(tmp_path, bad, key):
    arrays = _arrays()
    images = arrays[key].astype(np.float32) / 255
    images[1, 2, 3] = bad
    path = tmp_path / "nan.npz"
    np.savez(path, **dict(arrays, **{key: images}))
    with pytest.raises(VaelabError, match="1 NaN or infinite values") as info:
        load_dataset(str(path))
    assert str(path) in str(info.value) and key in str(info.value)


def test_npz_float_pixels_outside_unit_range_say_the_range(tmp_path):
    arrays = _arrays()
    path = tmp_path / "grey.npz"
    np.savez(path, **dict(arrays, x_test=arrays["x_test"].astype(np.float64)))  # 0-255 stored as floats
    with pytest.raises(VaelabError, match=r"x_test holds floats from 0.0 to 255.0; float images must lie in \[0, 1\]"):
        load_dataset(str(path))


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_empty_split_is_refused(tmp_path, split, dtype):
    arrays = _arrays()
    arrays[f"x_{split}"] = np.zeros((0, 28, 28), dtype)
    arrays[f"y_{split}"] = np.zeros(0, np.int64)
    path = tmp_path / "empty.npz"
    np.savez(path, **arrays)
    with pytest.raises(VaelabError, match=rf"empty.npz\): the {split} split has no images"):
        load_dataset(str(path))


def test_images_with_an_empty_dimension_are_refused(tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, **dict(_arrays(), x_train=np.zeros((30, 0, 28), np.uint8), x_test=np.zeros((12, 0, 28), np.uint8)))
    with pytest.raises(VaelabError, match="empty dimension"):
        load_dataset(str(path))


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_npz_empty_truncated_or_a_bare_npy(tmp_path):
    valid = _npz_bytes(**_arrays())
    for name, content in [
        ("empty.npz", b""),  # 0 bytes: was `Aborted.`, exit 1, through the CLI
        ("half.npz", valid[: len(valid) // 2]),
        ("cut-end.npz", valid[:-10]),
        ("array.npz", valid[valid.index(b"\x93NUMPY") :]),  # a bare .npy under an .npz name
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(VaelabError, match="not a readable .npz file") as info:
            load_dataset(str(path))
        assert str(path) in str(info.value)


def _npy_member(shape, descr: str = "|u1", body: bytes = b"") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body


def _npz_with_member(path, key: str, member: bytes) -> None:
    valid = zipfile.ZipFile(io.BytesIO(_npz_bytes(**_arrays())))
    with zipfile.ZipFile(path, "w") as archive:
        for name in valid.namelist():
            archive.writestr(name, member if name == f"{key}.npy" else valid.read(name))


def test_npz_member_declaring_absurd_shape_is_refused_before_allocating(tmp_path):
    # a 100-byte member whose header declares 2^62 images: numpy's own reader would allocate them first
    path = tmp_path / "absurd.npz"
    _npz_with_member(path, "x_train", _npy_member((2**62, 28, 28), body=bytes(100)))
    with pytest.raises(VaelabError, match=r"x_train declares shape \(4611686018427387904, 28, 28\)") as info:
        load_dataset(str(path))
    assert str(path) in str(info.value) and "holds 100 bytes" in str(info.value)


def test_npz_member_of_wrong_length_or_type(tmp_path):
    path = tmp_path / "short.npz"
    _npz_with_member(path, "y_test", _npy_member((12,), "<i8", bytes(8 * 11)))  # one label short
    with pytest.raises(VaelabError, match="y_test declares shape"):
        load_dataset(str(path))
    _npz_with_member(path, "y_test", _npy_member((12,), "<U3", bytes(12 * 12)))  # strings, not numbers
    with pytest.raises(VaelabError, match="y_test holds <U3 values"):
        load_dataset(str(path))


def test_sizes_are_compared_with_the_memory_available(tmp_path, monkeypatch):
    arrays = dict(_arrays(), x_train=np.zeros((3000, 28, 28), np.uint8), y_train=np.zeros(3000, np.int64))
    np.savez(tmp_path / "big.npz", **arrays)
    folder = write_fake_idx_set(tmp_path / "idx", n_train=3000)
    assert load_dataset(str(tmp_path / "big.npz")).x_train.shape[0] == 3000
    # the same files on a machine with 1 MiB free: refused before reading, saying what is available
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=1 << 20))
    with pytest.raises(
        VaelabError, match=r"big.npz: x_train .* would need about 2.2 MiB of memory; only 1.0 MiB is available"
    ):
        load_dataset(str(tmp_path / "big.npz"))
    with pytest.raises(VaelabError, match=r"train-images-idx3-ubyte .*of shape \(3000, 28, 28\).* only 1.0 MiB"):
        load_dataset(str(folder), mmap=False)


def test_npy_folder_truncated_or_nan(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    arrays = _arrays()
    for key, array in arrays.items():
        np.save(folder / f"{key}.npy", array)
    content = (folder / "x_train.npy").read_bytes()
    (folder / "x_train.npy").write_bytes(content[:-5])
    with pytest.raises(VaelabError, match="x_train.npy is not a readable .npy file"):
        load_dataset(str(folder))
    images = arrays["x_train"].astype(np.float32) / 255
    images[0, 0, 0] = np.nan
    np.save(folder / "x_train.npy", images)
    with pytest.raises(VaelabError, match="x_train holds 1 NaN or infinite values"):
        load_dataset(str(folder))


# --- splits ----------------------------------------------------------------------------------


def test_splits(tmp_path):
    arrays = _arrays(n_train=100, n_test=40)
    path = tmp_path / "split.npz"
    np.savez(path, **arrays)
    data = load_dataset(str(path))
    s = data.splits(validation_size=25)
    assert len(s["train"][0]) == 75 and len(s["validation"][0]) == 25 and len(s["test"][0]) == 40
    # validation is the last 25 training images, train the ones before: disjoint, together all of them
    np.testing.assert_array_equal(s["validation"][0][:, 0].numpy(), arrays["x_train"][75:])
    np.testing.assert_array_equal(s["validation"][1].numpy(), arrays["y_train"][75:])
    np.testing.assert_array_equal(s["train"][0][:, 0].numpy(), arrays["x_train"][:75])
    # limits keep the first images of train and test; validation is unaffected
    s = data.splits(validation_size=25, train_limit=10, test_limit=7)
    np.testing.assert_array_equal(s["train"][0][:, 0].numpy(), arrays["x_train"][:10])
    np.testing.assert_array_equal(s["train"][1].numpy(), arrays["y_train"][:10])
    np.testing.assert_array_equal(s["test"][0][:, 0].numpy(), arrays["x_test"][:7])
    np.testing.assert_array_equal(s["validation"][0][:, 0].numpy(), arrays["x_train"][75:])
    # a train limit beyond the cut never reaches into the validation images
    assert len(data.splits(validation_size=25, train_limit=1000)["train"][0]) == 75
    assert len(data.splits(validation_size=0)["validation"][0]) == 0
    with pytest.raises(VaelabError, match="validation_size"):
        data.splits(validation_size=100)


# --- batches ---------------------------------------------------------------------------------


def _indexed_images(n):
    """n distinct 1x1x2 images whose two pixels encode the index."""
    index = torch.arange(n)
    return torch.stack([index % 256, index // 256], dim=-1).to(torch.uint8).reshape(n, 1, 1, 2)


def _indices(batch):
    pixels = (batch * 255).round().long().reshape(len(batch), 2)
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def test_every_image_once_per_epoch():
    n = 300
    batches = Batches(_indexed_images(n), batch_size=64)
    assert len(batches) == 5
    generator = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(2):
        epoch = list(batches.epoch(generator))
        assert [len(b) for b in epoch] == [64, 64, 64, 64, 44]
        assert all(b.dtype == torch.float32 and b.shape[1:] == (1, 1, 2) for b in epoch)
        order = [i for b in epoch for i in _indices(b)]
        assert sorted(order) == list(range(n))
        orders.append(order)
    assert orders[0] != list(range(n)), "the epoch was not shuffled"
    assert orders[0] != orders[1], "two epochs had the same order"
    ordered = [i for b in batches.epoch(shuffle=False) for i in _indices(b)]
    assert ordered == list(range(n))


def test_same_seed_same_order():
    batches = Batches(_indexed_images(200), batch_size=32)

    def order(seed):
        generator = torch.Generator().manual_seed(seed)
        return [i for b in batches.epoch(generator) for i in _indices(b)]

    assert order(7) == order(7)
    assert order(7) != order(8)


def test_labelled_batches_pair_images_and_labels():
    n = 130
    labels = torch.arange(n) * 3
    batches = Batches(_indexed_images(n), labels, batch_size=50)
    seen = 0
    for x, y in batches.labelled():
        assert y.tolist() == [3 * i for i in _indices(x)]
        seen += len(x)
    assert seen == n


def test_dynamic_binarisation():
    images = torch.full((400, 1, 4, 4), 128, dtype=torch.uint8)
    images[:, :, 0] = 0
    images[:, :, 1] = 255
    batches = Batches(images, batch_size=100, binarize="dynamic", training=True)
    generator = torch.Generator().manual_seed(0)
    first = torch.cat(list(batches.epoch(generator, shuffle=False)))
    second = torch.cat(list(batches.epoch(generator, shuffle=False)))
    for x in (first, second):
        assert set(x.unique().tolist()) == {0.0, 1.0}
        assert (x[:, :, 0] == 0).all() and (x[:, :, 1] == 1).all()  # black stays black, white white
        assert abs(x[:, :, 2:].mean().item() - 128 / 255) < 0.03  # a Bernoulli(p) sample, not a threshold
    assert not torch.equal(first, second), "dynamic binarisation repeated itself between epochs"
    # the stored images themselves stay grey; only batches are binarised
    assert torch.equal(batches.images, images)


@pytest.mark.parametrize("mode, training", [("dynamic", False), ("static", True), ("static", False)])
def test_fixed_binarisation(mode, training):
    images = torch.randint(0, 256, (300, 1, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    a = Batches(images, batch_size=64, binarize=mode, training=training)
    b = Batches(images, batch_size=64, binarize=mode, training=training)
    generator = torch.Generator().manual_seed(0)
    x1 = torch.cat(list(a.epoch(generator, shuffle=False)))
    x2 = torch.cat(list(a.epoch(generator, shuffle=False)))
    x3 = torch.cat(list(b.epoch(torch.Generator().manual_seed(99), shuffle=False)))
    assert set(x1.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x1, x2) and torch.equal(x1, x3)
    assert torch.equal(x1, binarize_fixed(images).float() / 255)
    # it is a sample: brighter pixels are on more often
    grey = images.float() / 255
    assert abs(x1.mean().item() - grey.mean().item()) < 0.02


def test_no_binarisation_is_grey_levels():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(3, 1, 1, 1)
    (x,) = list(Batches(images, batch_size=8).epoch(shuffle=False))
    torch.testing.assert_close(x.flatten(), torch.tensor([0.0, 0.2, 1.0]))


# --- Fashion-MNIST: where it is looked for ---------------------------------------------------


def test_fashion_mnist_looks_in_vaelab_data_first(tmp_path, monkeypatch):
    fake = write_fake_idx_set(tmp_path / "data")  # named like the real files, but not them
    monkeypatch.setenv("VAELAB_DATA", str(fake))
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))

    def no_download(*args, **kwargs):
        raise AssertionError("download() called although VAELAB_DATA holds the files")

    monkeypatch.setattr(datasets, "download", no_download)
    with pytest.raises(VaelabError, match="checksum") as info:
        load_dataset("fashion-mnist")
    assert str(fake.resolve()) in str(info.value)


def test_fashion_mnist_data_dir_before_vaelab_data(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_DATA", str(write_fake_idx_set(tmp_path / "env")))
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    first = write_fake_idx_set(tmp_path / "dir" / "fashion-mnist", seed=1)  # DIR/fashion-mnist is searched too
    with pytest.raises(VaelabError, match="checksum") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "dir")
    assert str(first.resolve()) in str(info.value)


def test_fashion_mnist_not_found_and_offline(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VAELAB_CACHE", str(cache))
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-here")
    calls = []

    def offline(remote, dest, *args, **kwargs):
        calls.append(dest)
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(datasets, "download", offline)
    with pytest.raises(VaelabError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert calls == [cache / "fashion-mnist"]
    for needle in ("--data-dir", "VAELAB_DATA", "dataset-fashion-mnist", str(cache / "fashion-mnist")):
        assert needle in message, needle
    assert "no network in this test" in message
    assert str(tmp_path / "no-debian-here") in message  # it says where it looked


@pytest.mark.skipif(
    not datasets.folder_has_idx_set(datasets.DEBIAN_FASHION_MNIST), reason="Debian's dataset-fashion-mnist absent"
)
def test_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path))
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    data = load_dataset("fashion-mnist")  # verifies the four official sums
    assert tuple(data.x_train.shape) == (60000, 1, 28, 28) and tuple(data.x_test.shape) == (10000, 1, 28, 28)
    assert sorted(data.y_test.unique().tolist()) == list(range(10))
    assert len(data.class_names) == 10


@pytest.mark.parametrize("mode", ["none", "dynamic", "static"])
def test_mean_image_is_the_mean_training_target(mode):
    images = torch.randint(0, 256, (300, 1, 4, 4), dtype=torch.uint8)
    batches = Batches(images, batch_size=64, binarize=mode, training=True)
    if mode == "static":  # the stored, binarised targets
        expected = binarize_fixed(images).float().mean(0) / 255
    else:  # grey levels; a dynamic draw has them as its mean
        expected = images.float().mean(0) / 255
    torch.testing.assert_close(batches.mean_image(chunk=128), expected)
    if mode == "dynamic":
        draws = torch.stack(
            [torch.cat(list(batches.epoch(torch.Generator().manual_seed(s)))).mean(0) for s in range(40)]
        )
        assert (draws.mean(0) - expected).abs().max() < 0.02


def test_batches_carry_their_labels_in_the_order_and_rows_of_their_images():
    from vaelab.data import Batches

    images = torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10) * 7
    for binarize in ("none", "dynamic"):
        split = Batches(images, labels, batch_size=4, binarize=binarize)
        for batch in split.batches(torch.Generator().manual_seed(1)):
            if binarize == "none":
                assert torch.equal(batch.y, (batch.x[:, 0, 0, 0] * 255).round().long() * 7)
            assert len(batch.y) == len(batch.x)
        halves = [
            list(split.batches(torch.Generator().manual_seed(1), rows=lambda n, r=r: (r * n // 2, (r + 1) * n // 2)))
            for r in (0, 1)
        ]
        whole = list(split.batches(torch.Generator().manual_seed(1)))
        for a, b, full in zip(*halves, whole):
            assert torch.equal(torch.cat([a.y, b.y]), full.y)  # a process's labels are its rows' labels
    assert all(b.y is None for b in Batches(images, None, batch_size=4).batches())
