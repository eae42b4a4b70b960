"""The store's consolidated metadata: written when a run completes, so ``xarray.open_zarr(store,
group="runs/<id>", consolidated=True)`` works; the library itself lists and writes runs from the real metadata,
never from the consolidated copy, which only describes runs as they were at the last completion."""

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
from ood_core.store.opening import node_array, run_record, zarr_store

log = logging.getLogger(__name__)


def consolidate_store(
    store_url: str, *, run_id: str | None = None, storage_options: Mapping[str, Any] | None = None,
    attempts: int = 3,
) -> bool:
    """Write the store's consolidated metadata (into the root ``zarr.json``); True when it was written.

    This is what ``xarray.open_zarr(store, group="runs/<id>", consolidated=True)`` reads: xarray opens the
    store's root consolidated and looks the run up in it. With ``run_id``, the copy is read back and written
    again (``attempts`` times at most) until it shows that run complete: another process completing a run at
    the same instant may have written a copy listed before this run's status flipped. Best effort: a failure is
    logged, never raised (the run is complete either way; :func:`open_run` then reads the real metadata).
    """
    store = zarr_store(store_url, storage_options=storage_options)
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
                zarr.consolidate_metadata(store, zarr_format=3)
            if run_id is None or _consolidated_status(store, run_id) == "complete":
                return True
        except Exception as exc:  # e.g. another process writing a node's metadata at that instant
            log.warning("%s: consolidating the metadata failed (attempt %d of %d): %r",
                        store_url, attempt, attempts, exc)
    log.warning("%s: consolidated metadata may not show run %s; readers use the real metadata", store_url, run_id)
    return False


def _consolidated_run(store: Store, run_id: str) -> zarr.Group | None:
    """The run group as the store's consolidated metadata describes it, None without such a copy."""
    try:
        root = zarr.open_consolidated(store, zarr_format=3)
        node = root[f"{RUNS_GROUP}/{run_id}"]
    except (ValueError, KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None
    return node if isinstance(node, zarr.Group) else None


def _consolidated_status(store: Store, run_id: str) -> str | None:
    group = _consolidated_run(store, run_id)
    return None if group is None else run_record(group).get("status")


def consolidated_run_is_current(store: Store, run_id: str, n_samples: int) -> bool:
    """True when the consolidated copy shows the run complete with all its ``n_samples`` committed samples (then
    reading it gives the same dataset as the real metadata, for fewer reads on a remote store)."""
    group = _consolidated_run(store, run_id)
    if group is None or run_record(group).get("status") != "complete":
        return False
    try:
        return all(node_array(group, name).shape[0] == n_samples for name in SAMPLE_ARRAYS)
    except (KeyError, StoreError):
        return False
