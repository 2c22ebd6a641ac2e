"""Small image classifiers, one per data set, whose penultimate layer is the Fréchet distance's feature space.

LeNet-like: Conv 16 5x5 (same) ReLU -> MaxPool 2 -> Conv 32 5x5 (same) ReLU -> MaxPool 2 -> Dense 128
ReLU (the features) -> Dense 10. About 0.2 M parameters and 6 MFLOP per image, so featurising the
20,000 images of one evaluation takes a few seconds on one CPU core.

vaelab trains one for each data set in ``CLASSIFIERS`` (MNIST's digits, Fashion-MNIST's clothes);
the weights ship in the package as ``vaelab/eval/weights/NAME.safetensors`` beside ``NAME.json`` (the
exact command that made them, the seed, epochs, wall time and the test accuracy). To make them again::

    nice -n 10 python -m vaelab.eval.classifier --data mnist --out src/vaelab/eval/weights
    nice -n 10 python -m vaelab.eval.classifier --data fashion-mnist --out src/vaelab/eval/weights

Each trains on its data set's 60,000 training images (grey levels in [0, 1], no augmentation) with
Adam, seeded, on one thread by default, and reports its accuracy on the 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from vaelab.errors import VaelabError

# data set -> the file name of its classifier's weights (and the data it is trained on)
CLASSIFIERS = {"mnist": "mnist_lenet", "fashion-mnist": "fashion_lenet"}
FEATURE_DIM = 128
IMAGE_SHAPE = (1, 28, 28)


class LeNet(nn.Module):
    """conv-pool-conv-pool-fc-fc; :meth:`features` is the 128-d penultimate layer (after its ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14 x 14
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7 x 7
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N x 1 x 28 x 28 images in [0, 1] -> N x 128 features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def weights_dir() -> Path:
    """The package folder holding the shipped weights."""
    return Path(str(resources.files("vaelab") / "eval" / "weights"))


def weights_name(dataset: str) -> str:
    """The file name (without suffix) of ``dataset``'s classifier."""
    if dataset not in CLASSIFIERS:
        raise VaelabError(
            f"vaelab has no classifier for the data set {dataset!r}; it has one for {', '.join(CLASSIFIERS)}"
        )
    return CLASSIFIERS[dataset]


def load_classifier(dataset: str = "mnist", directory: Path | None = None) -> LeNet:
    """``dataset``'s trained classifier (eval mode, CPU) from ``directory`` (default: the weights shipped with vaelab)."""
    from vaelab.model.store import load_weights

    path = Path(directory or weights_dir()) / f"{weights_name(dataset)}.safetensors"
    if not path.is_file():
        raise VaelabError(
            f"the {dataset} classifier's weights {path} are missing; make them with "
            f"`python -m vaelab.eval.classifier --data {dataset} --out DIR` (or reinstall vaelab)"
        )
    model = LeNet()
    load_weights(model, path)
    # channels-last runs the convolutions through oneDNN: ~2x faster featurising on CPU
    return model.to(memory_format=torch.channels_last).eval()


def classifier_info(dataset: str = "mnist", directory: Path | None = None) -> dict:
    """The JSON written beside ``dataset``'s weights: command, seed, epochs, wall time, test accuracy."""
    path = Path(directory or weights_dir()) / f"{weights_name(dataset)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise VaelabError(f"cannot read {path} ({err})") from None


def _as_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def features(model: LeNet, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate-layer features of N x 1 x 28 x 28 images (uint8 0..255, or floats in [0, 1])."""
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise VaelabError(f"the classifier takes 1 x 28 x 28 images, got {tuple(images.shape[1:])}")
    model.eval()
    return torch.cat(
        [
            model.features(_as_unit_float(images[i : i + batch_size]).contiguous(memory_format=torch.channels_last))
            for i in range(0, len(images), batch_size)
        ]
    )


@torch.no_grad()
def accuracy(model: LeNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(_as_unit_float(images[i : i + batch_size]))
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    return correct / len(images)


def train_classifier(
    dataset: str = "mnist",
    epochs: int = 5,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    log=print,
) -> tuple[LeNet, dict]:
    """Train ``dataset``'s classifier on its training images; returns it and a summary (accuracy, time)."""
    from vaelab.data import load_dataset

    weights_name(dataset)  # a data set with no classifier is refused before any work
    data = load_dataset(dataset)
    x_train, y_train = data.x_train, data.y_train.long()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LeNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(x_train) // batch_size)
    # the step size shrinks by 0.7 each epoch: a cheap schedule that settles within a few epochs
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=steps_per_epoch, gamma=0.7)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(x_train), batch_size):
            index = order[start : start + batch_size]
            loss = loss_fn(model(_as_unit_float(x_train[index])), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        test_accuracy = accuracy(model, data.x_test, data.y_test.long())
        log(
            f"epoch {epoch}/{epochs}: train loss {total / len(x_train):.4f}, test accuracy {100 * test_accuracy:.2f}% "
            f"[{time.perf_counter() - started:.0f} s]"
        )
    seconds = time.perf_counter() - started
    summary = {
        "test_accuracy": accuracy(model, data.x_test, data.y_test.long()),
        "train_accuracy": accuracy(model, x_train, y_train),
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "wall_seconds": round(seconds, 1),
    }
    return model.eval(), summary


def save_classifier(model: LeNet, directory: Path, info: dict, dataset: str = "mnist") -> Path:
    from vaelab.io import atomic_write, atomic_write_json

    directory, name = Path(directory), weights_name(dataset)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = directory / f"{name}.safetensors"
    atomic_write(path, lambda tmp: safetensors.torch.save_file(state, str(tmp)))
    atomic_write_json(directory / f"{name}.json", info)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vaelab.eval.classifier",
        description="Train the classifier whose features the Fréchet distance of `vaelab eval` uses on a data set.",
    )
    parser.add_argument("--data", choices=sorted(CLASSIFIERS), default="mnist", help="the data set it classifies")
    parser.add_argument("--out", type=Path, required=True, help="folder for NAME.safetensors + .json")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    model, summary = train_classifier(args.data, epochs=args.epochs, seed=args.seed, log=log)
    command = "python -m vaelab.eval.classifier " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    info = {
        "name": weights_name(args.data),
        "architecture": "Conv16 5x5 ReLU, MaxPool2, Conv32 5x5 ReLU, MaxPool2, Dense128 ReLU (features), Dense10",
        "feature_dim": FEATURE_DIM,
        "data": f"{args.data}: 60,000 training images (grey levels / 255), accuracy on the 10,000 test images",
        "command": command,
        **summary,
        "threads": torch.get_num_threads(),
        "environment": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    path = save_classifier(model, args.out, info, args.data)
    log(f"test accuracy {100 * summary['test_accuracy']:.2f}% in {summary['wall_seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
