"""Consolidated metadata per run group (schema version 2): written into ``runs/<id>/zarr.json`` when the run
completes, so a reader opens a whole run from one object: ``xarray.open_zarr(f"{store}/runs/{id}",
consolidated=True)``, or :func:`~ood_core.store.readers.open_run`. The root never holds consolidated metadata:
what completing a run writes does not grow with the number of runs in the store (version 1 rewrote the whole
root, every node of every run, at each completion). The library lists and writes runs from the real metadata,
never from a consolidated copy."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import zarr
import zarr.errors
from zarr.abc.store import Store

from ood_core.store.contract import RUNS_GROUP, SAMPLE_ARRAYS
from ood_core.store.errors import StoreError
from ood_core.store.labels import legacy_string_arrays
from ood_core.store.opening import node_array, run_record, zarr_store

log = logging.getLogger(__name__)


def consolidate_run(store: Store, run_id: str) -> None:
    """Write the consolidated metadata of one run group into its own ``zarr.json`` (nothing else is written)."""
    with warnings.catch_warnings(), legacy_string_arrays():  # runs of earlier versions hold string arrays
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(store, path=f"{RUNS_GROUP}/{run_id}", zarr_format=3)


def consolidate_store(
    store_url: str, *, run_id: str | None = None, storage_options: Mapping[str, Any] | None = None,
) -> bool:
    """Write the consolidated metadata of run ``run_id`` (None: of every complete run); True when written.

    Best effort: a failure is logged, never raised (the run is complete either way; :func:`open_run` then
    reads the real metadata). Only run groups are written, never the root.
    """
    store = zarr_store(store_url, storage_options=storage_options)
    if run_id is None:
        return all(consolidate_store(store_url, run_id=name, storage_options=storage_options)
                   for name in _complete_runs(store))
    try:
        consolidate_run(store, run_id)
        return True
    except Exception as exc:  # e.g. a node being written at that instant
        log.warning("%s: consolidating the metadata of run %s failed; readers use the real metadata: %r",
                    store_url, run_id, exc)
        return False


def _complete_runs(store: Store) -> list[str]:
    root = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
    runs = root.get(RUNS_GROUP)
    if not isinstance(runs, zarr.Group):
        return []
    return sorted(name for name, node in runs.groups() if run_record(node).get("status") == "complete")


def consolidated_run(store: Store, run_id: str) -> zarr.Group | None:
    """The run group as its own consolidated metadata describes it, None without such a copy."""
    try:
        node = zarr.open_group(store, path=f"{RUNS_GROUP}/{run_id}", mode="r", zarr_format=3, use_consolidated=True)
    except (ValueError, KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None
    return node


def consolidated_run_is_current(store: Store, run_id: str, n_samples: int) -> bool:
    """True when the run's consolidated copy shows it complete with all its ``n_samples`` committed samples (then
    reading it gives the same dataset as the real metadata, for fewer reads on a remote store)."""
    group = consolidated_run(store, run_id)
    if group is None or run_record(group).get("status") != "complete":
        return False
    try:
        return all(node_array(group, name).shape[0] == n_samples for name in SAMPLE_ARRAYS)
    except (KeyError, StoreError):
        return False
