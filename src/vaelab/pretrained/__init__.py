"""Pretrained models shipped inside the package: ``vaelab.pretrained.load("seed-2d")``.

Each is a run directory's model files (``model.safetensors``, ``model.json``) plus its
``metrics.jsonl`` (for loss curves), copied from ``vaelab reproduce seed``; the README says how
each was trained. Loading reads safetensors and JSON only.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from vaelab.errors import VaelabError

if TYPE_CHECKING:
    from vaelab.model import VAE


def directory() -> Path:
    return Path(str(resources.files("vaelab") / "pretrained"))


def available() -> list[str]:
    return sorted(p.name for p in directory().iterdir() if (p / "model.safetensors").is_file())


def path(name: str) -> Path:
    """The folder holding a pretrained model's files; ``name`` is one of :func:`available`, never a path."""
    names = available()
    if name not in names:  # a path (absolute, ../) would reach a folder outside the package
        raise VaelabError(f"no pretrained model named {name!r}; available: {', '.join(names) or 'none are installed'}")
    return directory() / name


def load(name: str) -> VAE:
    """The pretrained model, in eval mode on the CPU."""
    from vaelab.model import load_model  # here, so that the names are listed without importing torch

    model, _, _ = load_model(path(name))
    return model
