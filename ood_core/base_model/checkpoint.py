"""Training checkpoints that load without running code: tensors in safetensors, everything else as JSON.

A checkpoint is one ``.safetensors`` file. Its tensors are the leaves of a nested state (model, EMA and
optimizer state dicts, the random generator's state); the state's structure and its other values (step,
losses, configs, optimizer hyper-parameters) are JSON in the file's metadata under :data:`STATE_KEY`.
Loading parses JSON and raw tensor bytes only, so a planted file can at worst fail to load. The write is
atomic (temporary file, then rename), so a kill mid-save keeps the last good checkpoint.

Pickle files (``torch.save``) from older versions are read only through torch's restricted unpickler
(``weights_only=True``); anything it refuses is refused here, with the reason.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ood_core.errors import ConfigurationError

STATE_KEY = "ood_checkpoint"
FORMAT = "ood-synth checkpoint 1"
_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Nested state -> JSON value; tensors are moved into ``tensors`` under their path and referenced."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: path}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {_DICT: [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint value at {path!r} of type {type(value).__name__} is neither JSON nor a tensor")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {_TENSOR}:
        return tensors[value[_TENSOR]]
    if set(value) == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if set(value) == {_DICT}:
        return {k: _decode(v, tensors) for k, v in value[_DICT]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts/lists/tuples of tensors and JSON values) atomically to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors, "state")
    metadata = {STATE_KEY: json.dumps(structure, allow_nan=False), "format": FORMAT}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no code runs while loading)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        structure = json.loads(metadata[STATE_KEY])
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ConfigurationError(f"{path}: not a readable ood-synth checkpoint ({type(exc).__name__}: {exc})") from exc
    state = _decode(structure, tensors)
    if not isinstance(state, dict):
        raise ConfigurationError(f"{path}: checkpoint state is {type(state).__name__}, expected a mapping")
    return state


def load_legacy_pickle(path: Path) -> dict[str, Any]:
    """Read an old ``torch.save`` checkpoint with torch's restricted unpickler, never the full one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise ConfigurationError(
            f"{path}: refused to load this pickle checkpoint: torch's safe loader (weights_only=True) rejects it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). A pickle can run code when "
            "loaded; delete the file or retrain, checkpoints are now written as .safetensors"
        ) from exc
    if not isinstance(state, dict):
        raise ConfigurationError(f"{path}: checkpoint holds {type(state).__name__}, expected a mapping")
    return state
