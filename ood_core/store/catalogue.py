"""The run catalogue: one small record per run under ``catalogue/<run_id>`` (schema version 2, DESIGN section 5).

Each entry is a zarr v3 group whose only content is its ``zarr.json`` (attribute ``ood_catalogue_entry``: id,
status, times, input-set key, counts, model, key settings), so any zarr reader, or a plain JSON parser, reads it.
A run writes only its own entry, whole, when it is created, completes or fails: no read-modify-write of a shared
object, so concurrent runs never race, and adding a run never rewrites anything of the other runs or the root.
Readers list ``catalogue/`` once and read the entries in parallel (:func:`read_entries`), or read only the
entries of one page of runs (:func:`~ood_core.store.readers.list_run_page`); the run groups stay the
truth: an entry that says "writing" is re-read from its run (heartbeat, committed samples), and a run without an
entry (older stores, a process killed between creating its group and its entry) is read from its group.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ood_core.store.contract import CATALOGUE_ATTR, CATALOGUE_GROUP
from ood_core.store.opening import list_names
from ood_core.store.provenance import json_safe, strict_json_dumps

KEY_SETTINGS = ("samples", "seed", "t0", "steps", "eta", "prior", "strategy", "resolution", "normalization",
                "stretch", "noise", "candidate_budget", "reference_count", "tile")
"""Parameters of a run copied into its entry (all of them are in the run's provenance)."""
_PARALLEL_READS = 64
_GROUP_NODE = {"zarr_format": 3, "node_type": "group"}


def _first_line(value: Any) -> str | None:
    if value is None:
        return None
    lines = str(value).strip().splitlines()
    return lines[0] if lines else ""


def _model(record: Mapping[str, Any]) -> dict[str, Any] | None:
    model = record.get("model")
    if not isinstance(model, Mapping):
        return None
    return {key: model.get(key) for key in ("source", "weights_sha256", "dtype") if key in model}


def resumable_failure(record: Mapping[str, Any]) -> bool | None:
    """For a failed run: whether its failure was the infrastructure's (it can be resumed); None otherwise."""
    if record.get("status") != "failed":
        return None
    failure = record.get("failure")
    return bool(failure.get("resumable")) if isinstance(failure, Mapping) else False


def catalogue_entry(record: Mapping[str, Any], *, n_inputs: int, n_samples: int) -> dict[str, Any]:
    """The catalogue entry of a run from its provenance record (``ood_run``) and its counts (JSON-safe)."""
    parameters = record.get("parameters")
    parameters = parameters if isinstance(parameters, Mapping) else {}
    sampler = record.get("sampler")
    rate = sampler.get("acceptance_rate") if isinstance(sampler, Mapping) else None
    origin = record.get("prefect")
    entry = {
        "run_id": record.get("run_id"),
        "status": record.get("status"),
        "started": record.get("started"),
        "ended": record.get("ended"),
        "input_set_key": record.get("input_set_key"),
        "n_inputs": int(n_inputs),
        "n_samples": int(n_samples),
        "acceptance_rate": rate if isinstance(rate, (int, float)) else None,
        "model": _model(record),
        "settings": {key: parameters[key] for key in KEY_SETTINGS if key in parameters},
        "flow_run_id": origin.get("flow_run_id") if isinstance(origin, Mapping) else None,
        "error": _first_line(record.get("error")) if record.get("status") == "failed" else None,
        "resumable": resumable_failure(record),
        "attempts": len(record.get("attempts") or []) or None,
    }
    safe = json_safe(entry)
    assert isinstance(safe, dict)
    return safe


def entry_key(run_id: str) -> str:
    """The stored key of a run's entry."""
    return f"{CATALOGUE_GROUP}/{run_id}/zarr.json"


def _node_bytes(attributes: Mapping[str, Any]) -> bytes:
    return strict_json_dumps({**_GROUP_NODE, "attributes": dict(attributes)}, indent=2).encode()


async def _write(store: Store, run_id: str, entry: Mapping[str, Any]) -> None:
    prototype = default_buffer_prototype()
    await store.set_if_not_exists(f"{CATALOGUE_GROUP}/zarr.json", prototype.buffer.from_bytes(
        _node_bytes({"ood_catalogue": "one group per run, attribute ood_catalogue_entry"})))
    await store.set(entry_key(run_id), prototype.buffer.from_bytes(_node_bytes({CATALOGUE_ATTR: dict(entry)})))


def write_entry(store: Store, entry: Mapping[str, Any]) -> None:
    """Write (or replace) one run's entry: one object, the run's own; the catalogue group is made if missing."""
    sync(_write(store, str(entry["run_id"]), entry))


def _parse(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        entry = json.loads(data)["attributes"][CATALOGUE_ATTR]
    except (ValueError, KeyError, TypeError):
        return None  # a damaged entry: its run is read from its group
    return dict(entry) if isinstance(entry, dict) else None


async def _read_all(store: Store, names: list[str]) -> dict[str, dict[str, Any]]:
    prototype = default_buffer_prototype()
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), _PARALLEL_READS):
        batch = names[start:start + _PARALLEL_READS]
        buffers = await asyncio.gather(*(store.get(entry_key(name), prototype=prototype) for name in batch))
        for name, buffer in zip(batch, buffers, strict=True):
            entry = _parse(None if buffer is None else buffer.to_bytes())
            if entry is not None and entry.get("run_id") == name:
                found[name] = entry
    return found


def read_entries(store: Store, run_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """The readable entries of the catalogue by run id: every one (one listing of ``catalogue/``), or only those
    of ``run_ids`` (one read each, no listing: a page of runs); missing and damaged ones left out."""
    if run_ids is None:
        listed = list_names(store, CATALOGUE_GROUP)
        run_ids = [name for name in listed if name != "zarr.json" and not name.endswith(".partial")]
    return sync(_read_all(store, sorted(set(run_ids))))


def has_catalogue(store: Store) -> bool:
    """True when the store has a catalogue group."""
    return bool(sync(store.exists(f"{CATALOGUE_GROUP}/zarr.json")))
