"""Save and load a trained model: ``model.safetensors`` (weights) + ``model.json`` (how to rebuild it).

No pickle: loading a file from someone else cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from vaelab.config import ModelConfig, RunConfig
from vaelab.errors import VaelabError
from vaelab.io import atomic_write, atomic_write_json
from vaelab.model.build import build_vae
from vaelab.model.vae import VAE

FORMAT = "vaelab-model"
FORMAT_VERSION = 1


def save_model(model: VAE, directory: Path, config: RunConfig, extra: dict[str, Any] | None = None) -> None:
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda tmp: safetensors.torch.save_file(state, str(tmp)))
    atomic_write_json(
        directory / "model.json",
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "image_shape": list(model.image_shape),
            "config": config.to_dict(),
            **(extra or {}),
        },
    )


def read_model_json(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "model.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise VaelabError(
            f"{directory} holds no model.json: is it a vaelab run directory that finished training?"
        ) from None
    except (OSError, ValueError) as err:
        raise VaelabError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VaelabError(f"{path} is not a vaelab model description")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise VaelabError(f"{path} was written by a newer vaelab (format {meta['format_version']}); upgrade vaelab")
    return meta


def load_model(directory: Path) -> tuple[VAE, RunConfig, dict[str, Any]]:
    """The model saved in ``directory``, in eval mode, with its run config and metadata."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VaelabError(f"{directory} is not a directory")
    meta = read_model_json(directory)
    config = RunConfig.from_dict(meta["config"], where=str(directory / "model.json"))
    model = build_vae(config.model, tuple(meta["image_shape"]))
    load_weights(model, directory / "model.safetensors")
    return model.eval(), config, meta


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        state = safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise VaelabError(f"{path} does not exist") from None
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise VaelabError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise VaelabError(f"{path} does not match the model described beside it: {err}") from None


__all__ = ["ModelConfig", "load_model", "save_model"]
