"""Bringing a store of an earlier schema version to :data:`~ood_core.store.contract.SCHEMA_VERSION`, losing nothing.

Version 1 to 2: every run gets its catalogue entry (:mod:`.catalogue`, made from its record), every complete run
its own consolidated metadata (:mod:`.consolidation`), and the root's consolidated metadata (a copy of the metadata
of every node of every run, rebuilt by version 1 at each completion) is dropped; the schema version is raised last,
so a migration that is interrupted is simply run again. Run groups keep their arrays, chunks, attributes and
checksums as they are: only the ``zarr.json`` of a complete run group gains its ``consolidated_metadata``.
Idempotent: on a version-2 store it writes only entries that are missing or differ from their runs.

The first write to a version-1 store migrates it (:class:`~ood_core.store.writer.RunWriter`); ``ood migrate STORE``
does it explicitly. A process of an earlier version still writing to the store would put the root's consolidated
metadata back when its run completes (harmless: readers of this version ignore it; ``ood migrate`` drops it again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.core.sync import sync

from ood_core.store.catalogue import read_entries, write_entry
from ood_core.store.consolidation import consolidate_run, consolidated_run
from ood_core.store.contract import LIBRARY, READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, STORE_ATTR
from ood_core.store.errors import StoreError, StoreNotFoundError
from ood_core.store.opening import open_root_readonly, schema_version, zarr_store
from ood_core.store.provenance import utc_now_iso
from ood_core.store.readers import run_entries


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate_store` did."""

    from_version: int
    to_version: int
    runs: int
    entries_written: int
    runs_consolidated: int
    root_bytes_before: int
    root_bytes_after: int


def _size(store: Store, key: str) -> int:
    try:
        return int(sync(store.getsize(key)))
    except FileNotFoundError:
        return 0


def _root_has_consolidated(store: Store) -> bool:
    try:
        zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=True)
    except ValueError:
        return False
    return True


def _write_root(store: Store, version: int) -> None:
    """The root's attributes at :data:`SCHEMA_VERSION`, noting the migration; its consolidated metadata dropped
    (a root opened without it writes its ``zarr.json`` without it)."""
    root = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    stored = root.attrs.get(STORE_ATTR)
    info: dict[str, Any] = dict(stored) if isinstance(stored, Mapping) else {}
    earlier = info.get("migrations")
    step = {"from": version, "to": SCHEMA_VERSION, "at": utc_now_iso(), "library": LIBRARY}
    migrations = [*(earlier if isinstance(earlier, list) else []), step]
    root.update_attributes({STORE_ATTR: {**info, "schema_version": SCHEMA_VERSION, "migrations": migrations}})


def migrate_store(store_url: str, *, storage_options: Mapping[str, Any] | None = None) -> MigrationReport:
    """Bring the store at ``store_url`` to the current schema version (see the module); StoreError when it is
    no store or of a version this library does not know."""
    try:
        version = schema_version(open_root_readonly(store_url, storage_options))
    except StoreNotFoundError as exc:
        raise StoreError(f"{store_url}: no store here to migrate") from exc
    if version not in READABLE_SCHEMA_VERSIONS:
        raise StoreError(f"{store_url}: schema version {version} cannot be migrated by this library")
    store = zarr_store(store_url, storage_options=storage_options)
    before = _size(store, "zarr.json")
    existing = read_entries(store)
    entries = run_entries(store_url, storage_options=storage_options)
    written = consolidated = 0
    for entry in entries:
        run_id = str(entry["run_id"])
        if entry.get("status") == "complete" and consolidated_run(store, run_id) is None:
            consolidate_run(store, run_id)
            consolidated += 1
        if existing.get(run_id) != entry:
            write_entry(store, entry)
            written += 1
    if version < SCHEMA_VERSION or _root_has_consolidated(store):
        _write_root(store, version)
    return MigrationReport(version, SCHEMA_VERSION, len(entries), written, consolidated, before,
                           _size(store, "zarr.json"))
