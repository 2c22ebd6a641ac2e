"""Save and load a trained model: ``model.safetensors`` (weights) + ``model.json`` (how to rebuild it).

No pickle: loading a file from someone else cannot run code. Both files may come from anyone, so
everything in them is checked before it is used: the description before a network is built from
it, every tensor's name, shape, dtype and finiteness before it becomes a weight. Weights may be stored
at half precision (float16 or bfloat16, as some shipped models are, to halve the file): they are widened to
float32, exactly, when loaded.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from vaelab.config import ModelConfig, RunConfig
from vaelab.errors import VaelabError
from vaelab.io import atomic_write, atomic_write_json
from vaelab.model.build import build_model
from vaelab.model.vae import VAE

FORMAT = "vaelab-model"
FORMAT_VERSION = 1
MODEL_JSON_LIMIT = 64 * 2**20  # bytes; a real model.json is a few kB (a large prior_cov, a few MB)


def save_model(model: VAE, directory: Path, config: RunConfig, extra: dict[str, Any] | None = None) -> None:
    """Write the model's two files; refuses non-finite weights or metadata, so a NaN model is never saved."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    require_finite(state, f"refusing to save {directory / 'model.safetensors'}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "image_shape": list(model.image_shape),
        "config": config.to_dict(),
        **(extra or {}),
    }
    try:
        json.dumps(meta, allow_nan=False)
    except ValueError:
        raise VaelabError(f"refusing to write {directory / 'model.json'}: its numbers include NaN or inf") from None
    atomic_write(directory / "model.safetensors", lambda tmp: safetensors.torch.save_file(state, str(tmp)))
    atomic_write_json(directory / "model.json", meta)


def read_model_json(directory: Path) -> dict[str, Any]:
    """The checked contents of ``directory/model.json``: every field a reader uses has its type."""
    path = Path(directory) / "model.json"
    try:
        if path.stat().st_size > MODEL_JSON_LIMIT:
            raise VaelabError(f"{path} is {path.stat().st_size:,} bytes, too large for a vaelab model description")
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VaelabError(
            f"{directory} holds no model.json: is it a vaelab run directory that finished training?"
        ) from None
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: absurdly nested JSON
        raise VaelabError(f"{path} is not readable JSON ({one_line(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VaelabError(f'{path} is not a vaelab model description (no "format": "{FORMAT}")')
    version = meta.get("format_version")
    if type(version) is not int:
        raise VaelabError(f"{path}: format_version must be an integer, got {short_repr(version)}")
    if version > FORMAT_VERSION:
        raise VaelabError(f"{path} was written by a newer vaelab (format {version}); upgrade vaelab")
    if version != FORMAT_VERSION:
        raise VaelabError(f"{path}: unknown format_version {version}; this vaelab reads format {FORMAT_VERSION}")
    shape = meta.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int and n >= 1 for n in shape)):
        raise VaelabError(
            f"{path}: image_shape must be [channels, height, width] of positive integers, got {short_repr(shape)}"
        )
    if not isinstance(meta.get("config"), dict):
        raise VaelabError(
            f"{path}: config must be a table of the run's config sections, got {short_repr(meta.get('config'))}"
        )
    for key, kind, check in _OPTIONAL_FIELDS:
        if key in meta and not check(meta[key]):
            raise VaelabError(f"{path}: {key} must be {kind}, got {short_repr(meta[key])}")
    return meta


_OPTIONAL_FIELDS = (
    ("epochs_trained", "a non-negative integer", lambda v: type(v) is int and v >= 0),
    ("dataset", "a string", lambda v: isinstance(v, str)),
    ("class_names", "a list of strings", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)),
    ("environment", "a table", lambda v: isinstance(v, dict)),
    ("test", "a table of metrics", lambda v: isinstance(v, dict)),
)


def load_model(directory: Path) -> tuple[VAE, RunConfig, dict[str, Any]]:
    """The model saved in ``directory``, in eval mode, with its run config and metadata."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VaelabError(f"{directory} is not a directory")
    meta = read_model_json(directory)
    try:
        config = RunConfig.from_dict(meta["config"], where="config")
        model = build_model(config.model, tuple(meta["image_shape"]))  # refuses sizes beyond memory first
    except VaelabError as err:
        raise VaelabError(f"{directory / 'model.json'} describes no model vaelab can build: {err}") from None
    load_weights(model, directory / "model.safetensors")
    return model.eval(), config, meta


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        state = safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise VaelabError(f"{path} does not exist") from None
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise VaelabError(f"{path} is not a readable safetensors file ({one_line(err)})") from None
    state = widened(state, model.state_dict())
    check_state(model, state, str(path))
    model.load_state_dict(state, strict=True)


def widened(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each float16 or bfloat16 tensor that stands for a float32 one widened to float32 (every
    value exactly representable); any other unchanged, so a mismatch is still named as it is in the file.
    Checkpoints and snapshots are never stored halved: their loading checks dtypes as they are."""
    half = (torch.float16, torch.bfloat16)
    return {
        name: t.float() if t.dtype in half and name in expected and expected[name].dtype == torch.float32 else t
        for name, t in state.items()
    }


def check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse ``state`` unless it holds exactly ``module``'s tensors, with their shapes and dtypes, all finite."""
    expected = module.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        names = [f"lacks {short_repr(sorted(missing))}"] if missing else []
        names += [f"has unknown {short_repr(sorted(unexpected))}"] if unexpected else []
        raise VaelabError(f"{source} does not match the model it should hold: it {' and '.join(names)}")
    for name, tensor in expected.items():
        saved = state[name]
        if saved.shape != tensor.shape or saved.dtype != tensor.dtype:
            raise VaelabError(f"{source}: {name} is {_describe(saved)}; the model needs {_describe(tensor)}")
    require_finite(state, f"{source} is unusable")


def require_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise ``what: NaN or inf in [names]`` if any floating-point tensor holds a non-finite number."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise VaelabError(f"{what}: NaN or inf in {short_repr(bad)}")


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} of shape {list(tensor.shape)}"


def short_repr(value: Any) -> str:
    """``repr`` cut to a line: a file's values can be arbitrarily long."""
    return reprlib.repr(value)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:200] + "..."


__all__ = ["ModelConfig", "check_state", "load_model", "require_finite", "save_model"]
