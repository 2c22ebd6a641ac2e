"""Resumable checkpoints in one safetensors file: tensors in the body, the rest as JSON metadata.

One file means one atomic rename, so a checkpoint is always whole: a run killed while writing
keeps the previous one. Optimiser state is flattened to named tensors (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from vaelab.errors import VaelabError
from vaelab.io import atomic_write


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng_states: dict[str, torch.Tensor],
    info: dict[str, Any],
    averaged: torch.nn.Module | None = None,
) -> None:
    """``averaged``: the run's moving average of the weights, if it keeps one (saved beside the model)."""
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    if averaged is not None:
        tensors.update({f"averaged.{k}": v.detach().cpu().contiguous() for k, v in averaged.state_dict().items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    for name, state in rng_states.items():
        tensors[f"rng.{name}"] = state.contiguous()
    metadata = {
        "info": json.dumps(info),
        "param_groups": json.dumps(opt["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
    }
    atomic_write(Path(path), lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    averaged: torch.nn.Module | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model, optimiser (and the weights' moving average, if given) in place; return (rng states, info)."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        info = json.loads(metadata["info"])
        param_groups = json.loads(metadata["param_groups"])
        scalars = json.loads(metadata.get("optimizer_scalars", "{}"))
    except FileNotFoundError:
        raise VaelabError(f"no checkpoint at {path}: the run never finished an epoch, start it again") from None
    except Exception as err:  # corrupt header, missing keys
        raise VaelabError(f"{path} is not a readable vaelab checkpoint ({err})") from None
    for prefix, module in (("model.", model), ("averaged.", averaged)):
        if module is None:
            continue
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            raise VaelabError(f"{path} holds no {prefix[:-1]} weights, which this run needs")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise VaelabError(f"{path} does not match the run's {prefix[:-1]} weights: {err}") from None
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            opt_state.setdefault(int(param_id), {})[name] = value
    for param_id, values in scalars.items():
        opt_state.setdefault(int(param_id), {}).update(values)
    optimizer.load_state_dict({"state": opt_state, "param_groups": param_groups})
    _match_parameter_layouts(optimizer)
    rng = {k[len("rng.") :]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, info


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give restored moment buffers their parameter's memory layout (e.g. channels-last).

    Saved tensors come back contiguous; a fused optimiser walks parameter, gradient and moments
    as flat memory, so a channels-last weight with a contiguous moment would be updated wrongly.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_like(param).copy_(value)
