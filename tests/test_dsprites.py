"""dSprites made from its definition: the factor grids, the drawing, the cache and its checksum, the
published file when a user has it, and factor labels through the data layer's batches."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from vaelab import VaelabError
from vaelab.data import dsprites, load_dataset
from vaelab.data.dsprites import CANVAS, MARGIN, SPRITE_RADIUS, VARIANTS, render
from vaelab.train import make_batches


def _draw(shape, scale=1.0, orientation=0.0, x=0.5, y=0.5) -> np.ndarray:
    one = lambda v: np.asarray([v], dtype=float)  # noqa: E731
    return render(np.asarray([shape]), one(scale), one(orientation), one(x), one(y))[0]


def test_the_definition_is_the_published_one():
    factors = VARIANTS["dsprites"].factors()
    assert [f.name for f in factors] == ["shape", "scale", "orientation", "position_x", "position_y"]
    assert [f.size for f in factors] == [3, 6, 40, 32, 32]
    assert math.prod(f.size for f in factors) == 737_280
    assert factors[0].values == ("square", "ellipse", "heart")
    np.testing.assert_allclose(factors[1].values, np.linspace(0.5, 1, 6))
    np.testing.assert_allclose(factors[2].values, np.linspace(0, 2 * np.pi, 40))
    np.testing.assert_allclose(factors[3].values, np.linspace(0, 1, 32))


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_a_sprite_lies_in_its_disc_and_never_touches_the_border(shape):
    for scale in (0.5, 1.0):
        image = _draw(shape, scale, orientation=0.7)
        rows, cols = np.nonzero(image)
        centre = MARGIN + 0.5 * (CANVAS - 2 * MARGIN)
        radius = np.hypot(cols + 0.5 - centre, rows + 0.5 - centre)
        assert radius.max() <= SPRITE_RADIUS * scale
        assert set(np.unique(image)) == {0, 255}
    for corner in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        image = _draw(shape, 1.0, 0.5, *corner)
        assert image[0].sum() == image[-1].sum() == image[:, 0].sum() == image[:, -1].sum() == 0
        # a shifted sprite keeps (nearly) its area: nothing is cut off
        assert abs(int((image > 0).sum()) - int((_draw(shape, 1.0, 0.5) > 0).sum())) <= 6


def test_each_factor_changes_the_image_as_its_name_says():
    area = lambda image: int((image > 0).sum())  # noqa: E731
    areas = [area(_draw(2, s)) for s in np.linspace(0.5, 1, 6)]
    assert areas == sorted(areas) and len(set(areas)) == 6  # scale grows the heart
    rows, cols = np.nonzero(_draw(0, x=0.0, y=1.0))
    assert cols.mean() < 16 and rows.mean() > 48  # x from the left, y from the top
    ellipse = _draw(1, orientation=0.0)
    _, cols = np.nonzero(ellipse)
    _, turned = np.nonzero(_draw(1, orientation=np.pi / 2))
    assert np.ptp(cols) > 1.4 * np.ptp(turned)  # the ellipse lies along x, then turns upright
    np.testing.assert_array_equal(_draw(2, orientation=0.0), _draw(2, orientation=2 * np.pi))  # as published
    assert not np.array_equal(_draw(0), _draw(1)) and not np.array_equal(_draw(1), _draw(2))


def test_rendered_sprites_are_the_made_tables_images_for_the_same_factors():
    table = load_dataset("dsprites-small").ground_truth
    rendered = dsprites.RenderedSprites(VARIANTS["dsprites-small"])
    assert rendered.sizes == table.sizes and rendered.names == table.names
    rng = np.random.default_rng(3)
    classes = rendered.sample_factors(300, rng)
    assert classes.shape == (300, len(table.sizes)) and (classes < np.asarray(table.sizes)).all()
    assert torch.equal(rendered.observations(classes), table.observations(classes))


def test_dsprites_small_is_made_once_cached_with_checksums_and_labelled(isolated_cache):
    data = load_dataset("dsprites-small")
    folder = isolated_cache / "dsprites" / f"dsprites-small-v{dsprites.GENERATOR_VERSION}"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["rows"] == 3 * 6 * 10 * 8 * 8 and meta["test_rows"] == 1152
    assert set(meta["sha256"]) == {"images.npy", "factors.npy"}
    assert len(data.x_train) == 11_520 - 1152 and len(data.x_test) == 1152
    assert data.x_train.shape[1:] == (1, 64, 64) and data.class_names == ("square", "ellipse", "heart")
    truth = data.ground_truth
    assert truth.sizes == (3, 6, 10, 8, 8)
    # the stored factor labels are those that draw the stored images
    rows = np.random.default_rng(0).choice(len(data.x_train), 200, replace=False)
    classes = data.factors_train[rows].numpy()
    np.testing.assert_array_equal(VARIANTS["dsprites-small"].draw(classes), data.x_train[rows].numpy())
    assert torch.equal(data.y_train, data.factors_train[:, 0])
    # the table finds an image by its factors, and sampling covers every factor
    assert torch.equal(truth.observations(classes), data.x_train[rows])
    sample = truth.sample_factors(5000, np.random.default_rng(1))
    assert [len(np.unique(sample[:, k])) for k in range(5)] == [3, 6, 10, 8, 8]
    # the split is a random one: train and test each see every shape, scale and position
    for split in (data.factors_train, data.factors_test):
        assert [len(torch.unique(split[:, k])) for k in range(5)] == [3, 6, 10, 8, 8]
    stat = (folder / "images.npy").stat()
    again = load_dataset("dsprites-small")  # read from the cache, not made again
    assert (folder / "images.npy").stat().st_mtime_ns == stat.st_mtime_ns
    assert torch.equal(again.x_test, data.x_test)


def test_the_drawing_is_deterministic(tmp_path):
    variant = VARIANTS["dsprites-small"]
    dsprites.generate(variant, tmp_path / "a")
    dsprites.generate(variant, tmp_path / "b")
    a, b = (json.loads((tmp_path / f / "meta.json").read_text())["sha256"] for f in "ab")
    assert a == b


def test_a_damaged_cache_is_refused_in_one_line(isolated_cache):
    load_dataset("dsprites-small")
    folder = isolated_cache / "dsprites" / f"dsprites-small-v{dsprites.GENERATOR_VERSION}"
    images = folder / "images.npy"
    saved = images.read_bytes()
    try:
        with open(images, "r+b") as handle:
            handle.seek(len(saved) - 100)
            handle.write(b"\x07")
        with pytest.raises(VaelabError, match="failed its checksum.*delete .* made again"):
            load_dataset("dsprites-small")
    finally:
        images.write_bytes(saved)
    meta = folder / "meta.json"
    text = meta.read_text()
    try:
        meta.write_text("{")
        with pytest.raises(VaelabError, match="damaged"):
            load_dataset("dsprites-small")
    finally:
        meta.write_text(text)


def test_the_colour_variant_has_colour_as_a_factor():
    variant = VARIANTS["dsprites-colour"]
    assert [f.name for f in variant.factors()] == [
        "colour",
        "shape",
        "scale",
        "orientation",
        "position_x",
        "position_y",
    ]
    classes = np.array([[c, 2, 5, 0, 8, 8] for c in range(4)])
    images = variant.draw(classes)
    assert images.shape == (4, 3, 64, 64)
    lit = images.max(axis=(2, 3))
    np.testing.assert_array_equal(lit, [[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]])
    assert all(np.array_equal(images[c].max(0), images[0, 0]) for c in range(4))  # the same sprite


def _fake_published(path, sizes=(1, 3, 2, 2, 2, 2), values=None):
    """An .npz laid out as the published file (keys, C order of the six latents), on a smaller grid."""
    classes = np.stack(np.unravel_index(np.arange(math.prod(sizes)), sizes), axis=1).astype(np.int64)
    grids = [
        np.ones(1),
        np.arange(1.0, 4.0),
        np.array([0.5, 1.0]),
        np.array([0.0, 3.0]),
        np.array([0, 1.0]),
        np.array([0, 1.0]),
    ]
    latents_values = np.stack([grids[k][classes[:, k]] for k in range(6)], axis=1)
    imgs = render(classes[:, 1], latents_values[:, 2], latents_values[:, 3], latents_values[:, 4], latents_values[:, 5])
    np.savez_compressed(
        path,
        imgs=(imgs // 255).astype(np.uint8) if values is None else values(imgs),
        latents_classes=classes,
        latents_values=latents_values,
    )
    return imgs


def test_the_published_file_is_read_when_the_user_has_it(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    drawn = _fake_published(folder / dsprites.PUBLISHED_FILE)
    data = load_dataset("dsprites", data_dir=folder)
    meta = json.loads((Path(data.source) / "meta.json").read_text())
    assert meta["source"].startswith(f"converted from {dsprites.PUBLISHED_FILE}")
    assert data.ground_truth.names == ("shape", "scale", "orientation", "position_x", "position_y")
    assert data.ground_truth.sizes == (3, 2, 2, 2, 2) and data.class_names == ("square", "ellipse", "heart")
    # every image is the file's (0 / 1 made 0 / 255) under the file's own factor classes
    everything = torch.cat([data.x_train, data.x_test])
    classes = torch.cat([data.factors_train, data.factors_test]).numpy()
    index = np.ravel_multi_index(tuple(classes.T), (3, 2, 2, 2, 2))
    np.testing.assert_array_equal(everything[:, 0].numpy(), drawn[index])


def test_a_bad_published_file_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _fake_published(folder / dsprites.PUBLISHED_FILE, values=lambda imgs: imgs)  # 0 / 255, not 0 / 1
    with pytest.raises(VaelabError, match="values above 1"):
        load_dataset("dsprites", data_dir=folder)
    with zipfile.ZipFile(folder / dsprites.PUBLISHED_FILE, "w") as archive:
        archive.writestr("imgs.npy", b"")
    with pytest.raises(VaelabError, match="lacks latents_classes, latents_values"):
        load_dataset("dsprites", data_dir=folder)
    (folder / dsprites.PUBLISHED_FILE).write_bytes(b"not a zip")
    with pytest.raises(VaelabError, match="not a readable .npz"):
        load_dataset("dsprites", data_dir=folder)


def test_batches_carry_the_factor_labels():
    config = tiny_config("data.name='dsprites-small'")
    dataset, batches = make_batches(config)
    batch = next(batches["train"].batches(torch.Generator().manual_seed(0)))
    assert batch.x.shape == (64, 1, 64, 64) and batch.factors.shape == (64, 5)
    # each batch row's factors draw its image
    np.testing.assert_array_equal(
        VARIANTS["dsprites-small"].draw(batch.factors.numpy())[:, :, :, :] / 255.0, batch.x.numpy()
    )
    test = next(batches["test"].batches(shuffle=False))
    assert torch.equal(test.factors, dataset.factors_test[: len(test.factors)])
    validation = next(batches["validation"].batches(shuffle=False))
    assert torch.equal(validation.factors, dataset.factors_train[-256:][: len(validation.factors)])
    _, mnist = make_batches(tiny_config())
    assert next(mnist["train"].batches()).factors is None


def test_vaelab_datasets_lists_the_generated_sets(run_cli):
    result = run_cli("datasets", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"dsprites", "dsprites-small", "dsprites-colour"} <= set(rows)
    assert "737,280" in rows["dsprites"]["description"]
