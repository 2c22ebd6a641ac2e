"""What the commands do: export a model's parts, encode a data set, run a model on its exported files.

Inputs for checking and calibrating an export come from the model's own training data: training
images for the encoder, codes drawn from q(z|x) of those images for the decoder.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from vaelab.config import RunConfig
from vaelab.data import Batches, load_dataset
from vaelab.errors import VaelabError
from vaelab.export.onnxfile import Exported, check_out, export_part, part_paths, session
from vaelab.model.base import LatentVariableModel

CALIBRATION_IMAGES = 512
CHECK_INPUTS = 64


@functools.lru_cache(maxsize=4)
def _first_training_images(name: str, data_dir: str, n: int) -> torch.Tensor:
    return load_dataset(name, data_dir or None).x_train[:n].clone()  # uint8, kept: exports come in pairs


def training_images(config: RunConfig, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """The first ``n`` training images of the model's data set, binarised as its evaluation binarises them."""
    images = _first_training_images(config.data.name, config.data.data_dir, n)
    batches = Batches(images, None, n, config.data.binarize, training=False)
    return next(batches.epoch(shuffle=False))


def part_inputs(model: LatentVariableModel, config: RunConfig, part: str, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Inputs of ``part`` as the model meets them: training images, or codes z ~ q(z|x) of them, drawn
    from the encoder part's mean and scale (the code the decoder part takes)."""
    x = training_images(config, n)
    if part == "encoder":
        return x.numpy()
    generator = torch.Generator().manual_seed(0)
    try:
        encoder = model.export_part("encoder")
    except VaelabError:  # a posterior without a closed-form scale: codes from its own sampler
        return model.q_z(x).rsample().detach().numpy()
    with torch.no_grad():
        mean, scale = encoder.module(x)[:2]
    return (mean + scale * torch.randn(mean.shape, generator=generator)).numpy()


def export(
    model: LatentVariableModel,
    config: RunConfig,
    part: str,
    out: Path,
    quantize: str = "none",
    source: str = "",
) -> tuple[list[Exported], list[str]]:
    """Export ``part`` (encoder, decoder or both) of ``model``; returns the files written and, for
    ``both``, one line for each part the model cannot export (skipped)."""
    paths = part_paths(Path(out), part)
    for path in paths.values():
        check_out(path)
    written, skipped = [], []
    for name, path in paths.items():
        try:
            model.export_part(name)
        except VaelabError as err:
            if part != "both":
                raise
            skipped.append(f"skipped the {name}: {err}")
            continue
        inputs = part_inputs(model, config, name)
        written.append(export_part(model, name, path, inputs[:CHECK_INPUTS], quantize, inputs, source))
    if not written:
        raise VaelabError("; ".join(skipped))
    return written, skipped


@torch.no_grad()
def encode_split(
    model: LatentVariableModel, config: RunConfig, dataset: str | None, split: str, batch: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(means, scales, labels) of every image of ``split`` (train or test) of ``dataset`` (default:
    the model's), binarised as the model's evaluation binarises them."""
    if split not in ("train", "test"):
        raise VaelabError(f"unknown split {split!r}; choose train or test")
    data = load_dataset(dataset or config.data.name, config.data.data_dir or None)
    if tuple(data.image_shape) != tuple(model.image_shape):
        raise VaelabError(
            f"the data set {data.name!r} has images of {tuple(data.image_shape)}; the model takes {tuple(model.image_shape)}"
        )
    images, labels = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    means, scales = [], []
    for x in Batches(images, None, batch, config.data.binarize, training=False).epoch(shuffle=False):
        mean, scale = model.features(x)
        means.append(mean.numpy())
        scales.append(scale.numpy())
    return np.concatenate(means), np.concatenate(scales), None if labels is None else labels.numpy()


@contextmanager
def onnx_networks(
    model: LatentVariableModel, files: dict[str, Path], threads: int = 1
) -> Iterator[LatentVariableModel]:
    """Meanwhile ``model`` computes each exported part's network by onnxruntime on its file, so every
    capability (the ELBO, encode, sample) measures what the file does."""
    runners = {}
    for part, path in files.items():
        exported = model.export_part(part)
        sess, name, output = session(path, threads), exported.input_name, exported.output_names[-1]

        def run(x: torch.Tensor, sess=sess, name=name, output=output) -> torch.Tensor:
            array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
            return torch.from_numpy(sess.run([output], {name: array})[0])

        runners[exported.network] = run
    with model.networks_replaced(runners):
        yield model
