"""Resumable checkpoints in one safetensors file: tensors in the body, the rest as JSON metadata.

One file means one atomic rename, so a checkpoint is always whole: a run killed while writing
keeps the previous one. Optimiser state is flattened to named tensors (no pickle).

A checkpoint may have been edited or damaged since it was written, so :func:`load_checkpoint`
checks all of it (every tensor's name, shape, dtype and finiteness, the optimiser's settings and
state, the random-number states, the epoch) before it changes the model or the optimiser.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from vaelab.errors import VaelabError
from vaelab.io import atomic_write
from vaelab.model.store import check_state, one_line, require_finite, short_repr

PREFIXES = ("model.", "averaged.", "optimizer.", "rng.", "objective.")
RNG_NAMES = ("torch", "data", "cuda")
_PARAM_ID = re.compile(r"(0|[1-9][0-9]*)", re.ASCII)


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng_states: dict[str, torch.Tensor],
    info: dict[str, Any],
    averaged: torch.nn.Module | None = None,
    objective_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """``averaged``: the run's moving average of the weights, if it keeps one (saved beside the model);
    ``objective_state``: what the objective keeps between steps (``Objective.state_dict``).

    Refuses non-finite weights or optimiser state: the previous checkpoint is kept instead.
    """
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
    tensors.update({f"objective.{k}": v.detach().cpu().contiguous() for k, v in (objective_state or {}).items()})
    require_finite(tensors, f"refusing to save the checkpoint {path}")
    for name, state in rng_states.items():
        tensors[f"rng.{name}"] = state.contiguous()
    metadata = {
        "info": json.dumps(info),
        "param_groups": json.dumps(opt["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
    }
    atomic_write(Path(path), lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))


def checkpoint_info(path: Path) -> dict[str, Any]:
    """The checkpoint's info (epoch, stage...) without its tensors; {} where it cannot be read, which
    :func:`load_checkpoint` then reports in full."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {}).get("info", "{}"))
    except Exception:  # a missing or damaged file: load_checkpoint says which
        return {}
    return info if isinstance(info, dict) else {}


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    averaged: torch.nn.Module | None = None,
    objective=None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model, optimiser (and the weights' moving average, and the objective's state, if given) in place;
    return (rng states, info).

    Everything is checked first: a checkpoint that does not fit the run raises :class:`VaelabError`
    and leaves the model and the optimiser as they were.
    """
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except FileNotFoundError:
        raise VaelabError(f"no checkpoint at {path}: the run never finished an epoch, start it again") from None
    except Exception as err:  # safetensors' own error types: a corrupt or truncated file
        raise VaelabError(f"{path} is not a readable vaelab checkpoint ({one_line(err)})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix in PREFIXES}
    for key, tensor in tensors.items():
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise VaelabError(f"{path} holds a tensor {short_repr(key)} that no vaelab checkpoint has")
        parts[prefix][key[len(prefix) :]] = tensor
    info = _metadata_json(path, metadata, "info")
    if not (isinstance(info, dict) and type(info.get("epoch")) is int and 0 <= info["epoch"] < 2**31):
        raise VaelabError(f"{path}: its info must say the epochs completed as an integer >= 0, got {short_repr(info)}")
    modules = {"model": model, "averaged": averaged}
    for name, module in modules.items():
        if module is not None:
            if not parts[f"{name}."]:
                raise VaelabError(f"{path} holds no {name} weights, which this run needs")
            check_state(module, parts[f"{name}."], f"{path} ({name} weights)")
    optimizer_state = _optimizer_state(
        path,
        optimizer,
        parts["optimizer."],
        _metadata_json(path, metadata, "param_groups"),
        _metadata_json(path, metadata, "optimizer_scalars", default={}),
    )
    rng = _rng_states(path, parts["rng."])
    if objective is not None:  # it checks the state before taking it
        objective.load_state_dict(parts["objective."])
    elif parts["objective."]:
        raise VaelabError(f"{path} holds objective state, which this run's objective does not keep")
    for name, module in modules.items():
        if module is not None:
            module.load_state_dict(parts[f"{name}."], strict=True)
    optimizer.load_state_dict(optimizer_state)
    _match_parameter_layouts(optimizer)
    return rng, info


def _metadata_json(path: Path, metadata: dict[str, str], key: str, default: Any = None) -> Any:
    if key not in metadata:
        if default is not None:
            return default
        raise VaelabError(f"{path} lacks its {key!r} metadata; it is not a whole vaelab checkpoint")
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as err:
        raise VaelabError(f"{path}: its {key!r} metadata is not valid JSON ({one_line(err)})") from None


def _optimizer_state(
    path: Path,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    saved_groups: Any,
    scalars: Any,
) -> dict[str, Any]:
    """The optimiser state dict the checkpoint describes, once it is known to fit ``optimizer``."""
    current = optimizer.state_dict()["param_groups"]
    if not (isinstance(saved_groups, list) and len(saved_groups) == len(current)):
        raise VaelabError(f"{path}: its optimiser has other parameter groups than this run's")
    params = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's numbering
    groups, templates = [], {}
    for saved, group in zip(saved_groups, current):
        if not (isinstance(saved, dict) and saved.keys() == group.keys() and saved["params"] == group["params"]):
            raise VaelabError(f"{path}: its optimiser settings do not match this run's optimiser")
        wrong = [k for k in group if k != "params" and not _same_kind(saved[k], group[k])]
        if wrong:
            raise VaelabError(f"{path}: the optimiser's {', '.join(wrong)} in it are not valid settings")
        restored = {k: tuple(v) if isinstance(group[k], tuple) else v for k, v in saved.items()}
        template = _state_template(path, type(optimizer), {k: v for k, v in restored.items() if k != "params"})
        templates.update({param_id: template for param_id in group["params"]})
        groups.append(restored)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        param_id, _, name = key.partition(".")
        if not (_PARAM_ID.fullmatch(param_id) and int(param_id) < len(params) and name):
            raise VaelabError(f"{path} holds optimiser state {short_repr(key)} for no parameter of this run")
        state.setdefault(int(param_id), {})[name] = value
    if not isinstance(scalars, dict):
        raise VaelabError(f"{path}: its optimizer_scalars metadata must be a table")
    for param_id, values in scalars.items():
        if not (_PARAM_ID.fullmatch(param_id) and int(param_id) < len(params) and isinstance(values, dict)):
            raise VaelabError(f"{path}: its optimizer_scalars name no parameter of this run ({short_repr(param_id)})")
        for name, value in values.items():
            if name in state.get(int(param_id), {}):
                raise VaelabError(f"{path}: optimiser state {param_id}.{name} is saved twice")
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in state.items():
        _check_param_state(path, param_id, params[param_id], values, templates[param_id])
    return {"state": state, "param_groups": groups}


def _same_kind(saved: Any, current: Any) -> bool:
    """Whether a setting read back from JSON has the type the optimiser's own setting has (numbers finite)."""
    if current is None or isinstance(current, bool):  # None: torch decides (foreach, fused)
        return saved is None or type(saved) is bool
    if isinstance(current, str):
        return type(saved) is str
    if isinstance(current, (int, float)):
        return _finite_number(saved)
    if isinstance(current, (list, tuple)):
        return isinstance(saved, list) and len(saved) == len(current) and all(map(_same_kind, saved, current))
    return False  # a tensor-valued setting is not something this format saves


def _finite_number(value: Any) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and abs(value) <= 2**53


def _state_template(path: Path, kind: type[torch.optim.Optimizer], settings: dict[str, Any]) -> dict[str, Any]:
    """The per-parameter state ``kind`` keeps with these settings: one step of it on a one-number parameter.

    Constructing it also runs torch's own range checks of the settings (a negative lr, betas >= 1...).
    """
    probe = torch.zeros(1, requires_grad=True)
    probe.grad = torch.zeros(1)
    try:
        scratch = kind([probe], **settings)
        scratch.step()
    except (ValueError, TypeError, RuntimeError) as err:
        raise VaelabError(f"{path}: its optimiser settings are not valid ({one_line(err)})") from None
    return dict(scratch.state[probe])


def _check_param_state(
    path: Path, param_id: int, param: torch.Tensor, values: dict[str, Any], template: dict[str, Any]
) -> None:
    where = f"{path}: the optimiser state of parameter {param_id}"
    if values.keys() != template.keys():
        raise VaelabError(f"{where} holds {short_repr(sorted(values))}; this optimiser keeps {sorted(template)}")
    for name, value in values.items():
        kind = template[name]
        if not torch.is_tensor(kind):
            ok = _finite_number(value)
        elif not torch.is_tensor(value):
            ok = False
        elif kind.dim() == 0:
            ok = value.dim() == 0 and value.is_floating_point() and bool(torch.isfinite(value))
        else:
            ok = value.shape == param.shape and value.dtype == param.dtype and bool(torch.isfinite(value).all())
        if not ok:
            raise VaelabError(f"{where}: {name} is not a finite value of the parameter's shape and dtype")
        if name in _NON_NEGATIVE and bool((torch.as_tensor(value) < 0).any()):
            raise VaelabError(f"{where}: {name} is negative somewhere, which that running mean of squares cannot be")
        if name == "step" and not float(value) >= 1:
            raise VaelabError(f"{where}: step is {float(value):g}; a saved optimiser has taken at least one step")


# Adam's running means of squared gradients (and AMSGrad's maximum of them): never negative in a real state,
# and a negative one turns the next step's square root into NaN
_NON_NEGATIVE = ("exp_avg_sq", "max_exp_avg_sq")


class _RngStates(dict):
    """The checkpoint's random-number states; one it lacks is the checkpoint's fault, not a KeyError."""

    def __init__(self, path: Path, states: dict[str, torch.Tensor]) -> None:
        super().__init__(states)
        self.path = path

    def __missing__(self, name: str) -> torch.Tensor:
        raise VaelabError(f"{self.path} holds no {name!r} random-number state; it was edited or is not a run's")


def _rng_states(path: Path, states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for name, state in states.items():
        if name not in RNG_NAMES:
            raise VaelabError(f"{path} holds an unknown random-number state {short_repr(name)}")
        if name == "cuda":
            if not torch.cuda.is_available():
                raise VaelabError(f"{path} holds a CUDA random-number state and this machine has no CUDA device")
            continue
        try:
            torch.Generator().set_state(state)  # the CPU generator's own check of a Mersenne Twister state
        except (RuntimeError, TypeError) as err:
            raise VaelabError(f"{path}: its {name!r} random-number state is not valid ({one_line(err)})") from None
    return _RngStates(path, states)


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
