"""dSprites (Matthey et al. 2017) made from its definition, and variants made the same way.

dSprites is every combination of 3 shapes (square, ellipse, heart) x 6 scales (0.5 .. 1) x 40
orientations (0 .. 2 pi) x 32 x 32 positions (0 .. 1): 737,280 binary 64 x 64 images. The published
file cannot be downloaded here, so the images are drawn from that definition (numpy only, the same
bytes on every run) into the user cache on first use, with the SHA-256 of what was made recorded
and checked when it is read. A user who has the published ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
(in ``--data-dir``, ``$VAELAB_DATA`` or the cache's ``dsprites`` folder) gets that file's images instead,
converted once into the same layout. docs/disentanglement.md says how the drawing differs from it.

Drawing: a shape is defined in sprite coordinates (u, v), v up, inside the unit disc; at scale s and
orientation t it is rotated by t (counter-clockwise on screen) and scaled to a disc of
``SPRITE_RADIUS * s`` pixels around its centre; positions 0 .. 1 put the centre from ``MARGIN`` to
``64 - MARGIN`` pixels (x from the left, y from the top), so no sprite is ever cut by the border. A
pixel is on when its centre is inside the shape.

Stored rows follow one fixed random permutation of the combinations, so the last ``held_out_rows`` rows
(the test split) and the last ``data.validation_size`` rows before them are uniform random subsets.
"""

from __future__ import annotations

import json
import math
import os
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.core.memory import require_memory
from vaelab.data import datasets
from vaelab.data.factors import Factor, FactorGrid, FactorImages
from vaelab.data.sources import cache_dir, sha256_of_file, verify_digest
from vaelab.errors import VaelabError
from vaelab.io import atomic_write, atomic_write_json, require_regular_file

CANVAS = 64
SPRITE_RADIUS = 10.0  # pixels: a shape at scale 1 fits in a disc of this radius
MARGIN = 11.0  # pixels from the border to the centre at position 0 (and 1): no sprite is cut
SHAPES = ("square", "ellipse", "heart")
SQUARE_HALF_SIDE = 0.7  # its corners at radius 0.99
ELLIPSE_AXES = (1.0, 0.65)  # semi-axes along u and v at orientation 0
HEART_SCALE, HEART_CENTRE = 0.8, 0.25  # (x^2 + y^2 - 1)^3 <= x^2 y^3 lies within 1.25 of (0, 0.25)

# the published factor grids (latents_values of the .npz)
SCALES = tuple(np.linspace(0.5, 1.0, 6).tolist())
ORIENTATIONS = tuple(np.linspace(0.0, 2 * np.pi, 40).tolist())
POSITIONS = tuple(np.linspace(0.0, 1.0, 32).tolist())
COLOURS = {"white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}

PUBLISHED_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
GENERATOR_VERSION = 1  # bump when the drawing changes: the cache folder is named after it
SPLIT_SEED = 20170301  # the fixed permutation of the stored rows
MAX_TEST_ROWS = 10_000
CHUNK = 8192  # images drawn (or converted) at a time


def inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the sprite-coordinate points (u, v) lie in ``shape`` (all within the unit disc)."""
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF_SIDE
    if shape == "ellipse":
        a, b = ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if shape == "heart":
        x, y = u / HEART_SCALE, v / HEART_SCALE + HEART_CENTRE
        return (x * x + y * y - 1.0) ** 3 <= x * x * y**3
    raise ValueError(f"unknown shape {shape!r}")


def centre(position: np.ndarray) -> np.ndarray:
    """Pixel coordinate of a sprite's centre for positions in [0, 1]."""
    return MARGIN + np.asarray(position) * (CANVAS - 2 * MARGIN)


WINDOW = int(2 * SPRITE_RADIUS) + 2  # pixels around floor(centre) - SPRITE_RADIUS - 1 that can be on


def render(shape: np.ndarray, scale: np.ndarray, orientation: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """N binary 64 x 64 images (uint8 0 / 255) of shape classes ``shape`` (indices into SHAPES) at the
    given scales, orientations (radians) and positions (in [0, 1])."""
    n = len(shape)
    cx, cy = centre(x), centre(y)
    x0 = np.floor(cx).astype(np.int64) - int(SPRITE_RADIUS) - 1  # each sprite's window
    y0 = np.floor(cy).astype(np.int64) - int(SPRITE_RADIUS) - 1
    offsets = np.arange(WINDOW)
    px = x0[:, None] + offsets + 0.5 - cx[:, None]  # pixel centres relative to the sprite's centre, n x W
    py = cy[:, None] - (y0[:, None] + offsets + 0.5)  # ... upwards
    r = SPRITE_RADIUS * np.asarray(scale)
    cos, sin = np.cos(orientation) / r, np.sin(orientation) / r
    # rotate the pixel grid by -t: the shape turns by +t (counter-clockwise on screen)
    u = cos[:, None, None] * px[:, None, :] + sin[:, None, None] * py[:, :, None]
    v = -sin[:, None, None] * px[:, None, :] + cos[:, None, None] * py[:, :, None]
    on = np.zeros((n, WINDOW, WINDOW), dtype=bool)
    for index, name in enumerate(SHAPES):
        these = shape == index
        if these.any():
            on[these] = inside(name, u[these], v[these])
    images = np.zeros((n, CANVAS * CANVAS), dtype=np.uint8)
    rows = (y0[:, None] + offsets)[:, :, None] * CANVAS + (x0[:, None] + offsets)[:, None, :]
    image, where = np.nonzero(on.reshape(n, -1))
    images[image, rows.reshape(n, -1)[image, where]] = 255
    return images.reshape(n, CANVAS, CANVAS)


# --- the variants ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A data set of sprites: which classes of the published grids it keeps, and its colours."""

    name: str
    description: str
    every: dict[str, int]  # keep every n-th class of these factors (1: all)
    colours: tuple[str, ...] = ()  # a colour factor (RGB images) when given

    def factors(self) -> tuple[Factor, ...]:
        grids = {
            "shape": SHAPES,
            "scale": SCALES,
            "orientation": ORIENTATIONS,
            "position_x": POSITIONS,
            "position_y": POSITIONS,
        }
        chosen = tuple(Factor(name, tuple(values[:: self.every.get(name, 1)])) for name, values in grids.items())
        return ((Factor("colour", self.colours),) if self.colours else ()) + chosen

    @property
    def channels(self) -> int:
        return 3 if self.colours else 1

    def draw(self, classes: np.ndarray) -> np.ndarray:
        """Images (N x C x 64 x 64 uint8) of the combinations ``classes`` (N x K, this variant's classes)."""
        factors = self.factors()
        values = {f.name: np.asarray(f.values)[classes[:, k]] for k, f in enumerate(factors)}
        shape = classes[:, [f.name for f in factors].index("shape")]
        grey = render(shape, values["scale"], values["orientation"], values["position_x"], values["position_y"])
        if not self.colours:
            return grey[:, None]
        rgb = np.asarray([COLOURS[c] for c in self.colours], dtype=np.uint16)[classes[:, 0]]  # N x 3
        return (grey[:, None].astype(np.uint16) * rgb[:, :, None, None] // 255).astype(np.uint8)


class RenderedSprites(FactorGrid):
    """A variant's images drawn when asked for, from their factor classes: the same images as its made table's
    :class:`FactorImages` gives (both come from :meth:`Variant.draw`), without making the table first."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.factors = variant.factors()

    def observations(self, classes: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.variant.draw(np.asarray(classes)))


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "dsprites",
            "dSprites (Matthey et al. 2017), 737,280 64x64 binary images of 3 shapes x 6 scales "
            "x 40 orientations x 32 x 32 positions, with the factors; made here on first use",
            {},
        ),
        Variant(
            "dsprites-small",
            "dSprites with every 4th orientation and position: 11,520 images of the same "
            "grids, for quick trials and tests",
            {"orientation": 4, "position_x": 4, "position_y": 4},
        ),
        Variant(
            "dsprites-colour",
            "coloured dSprites: colour (white, red, green, blue) as a fifth factor, every "
            "4th orientation, every 2nd position: 184,320 64x64 RGB images",
            {"orientation": 4, "position_x": 2, "position_y": 2},
            ("white", "red", "green", "blue"),
        ),
    )
}


def held_out_rows(total: int) -> int:
    """The size of the test split: a tenth of the images, at most MAX_TEST_ROWS."""
    return min(MAX_TEST_ROWS, total // 10)


# --- the cache ------------------------------------------------------------------------------------

IMAGES, CLASSES, META = "images.npy", "factors.npy", "meta.json"


def _write_table(
    folder: Path,
    factors: tuple[Factor, ...],
    channels: int,
    fill: Callable[[np.ndarray, np.ndarray], None],
    source: str,
) -> None:
    """Make ``folder``'s images.npy and factors.npy with ``fill(images, classes)``, then meta.json (last:
    its presence says the table is complete), each written atomically."""
    sizes = tuple(f.size for f in factors)
    total = math.prod(sizes)
    started = time.perf_counter()
    classes_path = folder / CLASSES
    atomic_write(
        folder / IMAGES, lambda tmp: _fill_images(tmp, (total, channels, CANVAS, CANVAS), classes_path, sizes, fill)
    )
    meta = {
        "generator_version": GENERATOR_VERSION,
        "source": source,
        "factors": [{"name": f.name, "values": list(f.values)} for f in factors],  # in column order
        "rows": total,
        "test_rows": held_out_rows(total),
        "split_seed": SPLIT_SEED,
        "sha256": {IMAGES: sha256_of_file(folder / IMAGES), CLASSES: sha256_of_file(classes_path)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(folder / META, meta)


def _fill_images(
    tmp: Path,
    shape: tuple[int, ...],
    classes_path: Path,
    sizes: tuple[int, ...],
    fill: Callable[[np.ndarray, np.ndarray], None],
) -> None:
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    classes = np.zeros((shape[0], len(sizes)), dtype=np.uint8)
    fill(images, classes)
    images.flush()
    del images
    atomic_write(classes_path, lambda tmp_path: _save_npy(tmp_path, classes))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save given a path would add ".npy" to the temporary name
        np.save(handle, array)


def _split_order(total: int) -> np.ndarray:
    """Stored row r holds combination ``order[r]`` (the combinations numbered in C order of the factors)."""
    return np.random.default_rng(SPLIT_SEED).permutation(total)


def generate(variant: Variant, folder: Path) -> None:
    """Draw ``variant`` into ``folder`` (see the module docstring)."""
    factors = variant.factors()
    sizes = tuple(f.size for f in factors)

    def fill(images: np.ndarray, classes: np.ndarray) -> None:
        order = _split_order(len(images))
        for start in range(0, len(images), CHUNK):
            combos = np.stack(np.unravel_index(order[start : start + CHUNK], sizes), axis=1)
            images[start : start + CHUNK] = variant.draw(combos)
            classes[start : start + CHUNK] = combos

    require_disk(folder, math.prod(sizes) * variant.channels * CANVAS * CANVAS, variant.name)
    _write_table(folder, factors, variant.channels, fill, f"generated by vaelab (drawing version {GENERATOR_VERSION})")


def require_disk(folder: Path, nbytes: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    disk = os.statvfs(folder)
    free = disk.f_bavail * disk.f_frsize
    if nbytes > free:
        from vaelab.core.memory import size_text

        raise VaelabError(
            f"{what} needs {size_text(nbytes)} of disk in {folder}; only {size_text(free)} is free "
            "(set VAELAB_CACHE to a folder on a larger disk)"
        )


# --- the published file ---------------------------------------------------------------------------

PUBLISHED_COLUMNS = ("colour", "shape", "scale", "orientation", "position_x", "position_y")


def convert_published(npz: Path, folder: Path) -> None:
    """The published .npz's images (0 / 1) and latents_classes, in vaelab's layout (0 / 255, rows in the
    split order), read as a stream: the 2.9 GB of images are never held in memory at once."""
    require_regular_file(npz, "dSprites file")
    try:
        with zipfile.ZipFile(npz) as archive:
            names = archive.namelist()
            missing = [key for key in ("imgs", "latents_classes", "latents_values") if f"{key}.npy" not in names]
            if missing:
                raise VaelabError(f"{npz} lacks {', '.join(missing)}: it is not the published dSprites file")
            classes = _small_member(archive, "latents_classes", npz)
            values = _small_member(archive, "latents_values", npz)
            if classes.ndim != 2 or classes.shape[1] != 6 or values.shape != classes.shape:
                raise VaelabError(
                    f"{npz}: latents_classes and latents_values must be N x 6, got {classes.shape}, {values.shape}"
                )
            if not np.issubdtype(classes.dtype, np.integer):
                raise VaelabError(f"{npz}: latents_classes holds {classes.dtype}, not integers")
            kept = [k for k in range(6) if classes[:, k].max(initial=0) > 0]  # colour has one value
            factors = tuple(
                Factor(
                    PUBLISHED_COLUMNS[k], tuple(_class_values(classes[:, k], values[:, k], npz, PUBLISHED_COLUMNS[k]))
                )
                for k in kept
            )
            # the file numbers its shapes 1, 2, 3: name them
            factors = tuple(Factor(f.name, SHAPES) if f.name == "shape" and f.size == 3 else f for f in factors)
            total = len(classes)
            FactorImages(factors, torch.empty(total, 0), classes[:, kept])  # every combination once, or refused
            with archive.open("imgs.npy") as member:
                shape_, dtype = _npy_header(member, npz)
                if shape_ != (total, CANVAS, CANVAS) or dtype != np.uint8:
                    raise VaelabError(
                        f"{npz}: imgs is {dtype} {shape_}; the published file holds uint8 ({total}, 64, 64)"
                    )
                position = np.empty(total, dtype=np.int64)
                position[_split_order(total)] = np.arange(total)  # file row -> stored row

                def fill(images: np.ndarray, stored_classes: np.ndarray) -> None:
                    stored_classes[position] = classes[:, kept]
                    for start in range(0, total, CHUNK):
                        count = min(CHUNK, total - start)
                        raw = member.read(count * CANVAS * CANVAS)
                        if len(raw) != count * CANVAS * CANVAS:
                            raise VaelabError(f"{npz}: imgs is truncated")
                        chunk = np.frombuffer(raw, np.uint8).reshape(count, 1, CANVAS, CANVAS)
                        if chunk.max(initial=0) > 1:
                            raise VaelabError(f"{npz}: imgs holds values above 1; the published images are 0 / 1")
                        images[position[start : start + count]] = chunk * np.uint8(255)

                require_disk(folder, total * CANVAS * CANVAS, "the converted dSprites file")
                _write_table(folder, factors, 1, fill, f"converted from {npz.name} (sha256 {sha256_of_file(npz)})")
    except FileNotFoundError:
        raise VaelabError(f"dSprites file {npz} does not exist") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, NotImplementedError) as err:
        raise VaelabError(f"{npz} is not a readable .npz file ({err})") from None


def _npy_header(stream, npz: Path) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read:
        raise VaelabError(f"{npz}: a .npy member of version {version}")
    shape, fortran, dtype = read[version](stream)
    if fortran:
        raise VaelabError(f"{npz}: a .npy member in Fortran order")
    return tuple(shape), dtype


def _small_member(archive: zipfile.ZipFile, key: str, npz: Path) -> np.ndarray:
    info = archive.getinfo(f"{key}.npy")
    require_memory(info.file_size, f"{npz}: {key}")
    return datasets.npz_member(archive, key, npz)


def _class_values(classes: np.ndarray, values: np.ndarray, npz: Path, name: str) -> list[float]:
    """The value of each class of one factor, as the file's latents_values give them."""
    size = int(classes.max()) + 1
    table = np.full(size, np.nan)
    table[classes] = values
    if np.isnan(table).any() or not np.allclose(table[classes], values):
        raise VaelabError(f"{npz}: the {name} classes and values do not correspond one to one")
    return table.tolist()


# --- loading --------------------------------------------------------------------------------------


def find_published(data_dir: Path | None) -> Path | None:
    """The published .npz in the places vaelab looks for data, if the user has it."""
    folders = [data_dir, Path(os.environ["VAELAB_DATA"]) if os.environ.get("VAELAB_DATA") else None]
    candidates = []
    for base in folders:
        if base is not None:
            candidates += [base / "dsprites" / PUBLISHED_FILE, base / PUBLISHED_FILE]
    candidates.append(cache_dir() / "dsprites" / PUBLISHED_FILE)
    return next((path for path in candidates if path.is_file()), None)


def table_folder(variant: Variant, published: Path | None) -> Path:
    if published is not None:
        stat = published.stat()
        return cache_dir() / "dsprites" / f"published-{stat.st_size}-{stat.st_mtime_ns}"
    return cache_dir() / "dsprites" / f"{variant.name}-v{GENERATOR_VERSION}"


def load(variant: Variant, data_dir: Path | None) -> datasets.ImageDataset:
    """``variant`` as an ImageDataset with its factors (made into the cache first if it is not there)."""
    published = find_published(data_dir) if variant.name == "dsprites" else None
    folder = table_folder(variant, published)
    if not (folder / META).is_file():
        if published is not None:
            convert_published(published, folder)
        else:
            generate(variant, folder)
    return read_table(folder, variant.name)


def read_table(folder: Path, name: str) -> datasets.ImageDataset:
    """The data set in ``folder`` (written by :func:`generate` or :func:`convert_published`), checksums checked."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        factors = tuple(Factor(f["name"], tuple(f["values"])) for f in meta["factors"])
        expected, test = meta["sha256"], int(meta["test_rows"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise VaelabError(f"{folder / META} is damaged ({err}); delete {folder} and it will be made again") from None
    for file in (IMAGES, CLASSES):
        try:
            verify_digest(folder / file, expected[file], "sha256")
        except (FileNotFoundError, KeyError):
            raise VaelabError(f"{folder} lacks {file}; delete {folder} and it will be made again") from None
        except VaelabError as err:
            raise VaelabError(f"{err}; delete {folder} and it will be made again") from None
    mapped = datasets.memory_map(folder / IMAGES, raw=True)
    images = np.load(folder / IMAGES, mmap_mode="c" if mapped else "r", allow_pickle=False)
    if not mapped:
        require_memory(images.nbytes, f"{name} ({images.shape} images)", "or use data.mmap = 'always'")
        images = np.array(images)
    classes = np.load(folder / CLASSES, allow_pickle=False).astype(np.int64)
    if not 0 < test < len(images) or len(classes) != len(images):
        raise VaelabError(f"{folder / META} does not describe its files; delete {folder} and it will be made again")
    images_t, classes_t = torch.from_numpy(images), torch.from_numpy(classes)
    names = [f.name for f in factors]
    label = names.index("shape") if "shape" in names else 0
    cut = len(images) - test
    return datasets.ImageDataset(
        name=name,
        x_train=images_t[:cut],
        y_train=classes_t[:cut, label],
        x_test=images_t[cut:],
        y_test=classes_t[cut:, label],
        source=str(folder),
        class_names=tuple(str(v) for v in factors[label].values),
        memory_mapped=mapped,
        factors_train=classes_t[:cut],
        factors_test=classes_t[cut:],
        ground_truth=FactorImages(factors, images_t, classes),
    )


def _locate(variant: Variant) -> Callable[[Path | None], str]:
    def locate(data_dir: Path | None) -> str:
        published = find_published(data_dir) if variant.name == "dsprites" else None
        folder = table_folder(variant, published)
        if (folder / META).is_file():
            return str(folder)
        made = f"converted from {published}" if published else "made"
        return f"{made} on first use into {folder}"

    return locate


def _register() -> None:
    for variant in VARIANTS.values():
        datasets.register(
            variant.name, lambda data_dir, v=variant: load(v, data_dir), variant.description, _locate(variant)
        )


_register()

__all__ = [
    "PUBLISHED_FILE",
    "SHAPES",
    "VARIANTS",
    "RenderedSprites",
    "Variant",
    "convert_published",
    "generate",
    "inside",
    "render",
]
