"""Validation of a store against the contract of DESIGN sections 5 and 6.

:func:`validate_store` lists every problem it finds (empty list: the store is valid); :func:`check_store`
raises :class:`StoreSchemaError` naming them. Array metadata is read from each array's own ``zarr.json``
(never from consolidated copies), so a resized or deleted array is seen as it is on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.abc.store import Store

from ood_core.store.catalogue import read_entries
from ood_core.store.contract import (
    CATALOGUE_GROUP,
    FINAL_STATUSES,
    INPUT_ARRAYS,
    LEGACY_DTYPES,
    PROGRESS_ATTR,
    READABLE_SCHEMA_VERSIONS,
    RUN_ARRAYS,
    RUN_ATTR,
    RUNS_GROUP,
    SAMPLE_ARRAYS,
    SCHEMA_VERSION,
    STATUSES,
    STORE_ATTR,
    ArraySpec,
    array_spec,
)
from ood_core.store.errors import StoreError, StoreSchemaError
from ood_core.store.heartbeat import STALE_AFTER_S
from ood_core.store.integrity import has_checksums, verify_run
from ood_core.store.opening import zarr_store
from ood_core.store.provenance import strict_json_dumps
from ood_core.store.readers import RunInfo, list_runs

#: Provenance keys every complete run must carry (DESIGN section 6).
REQUIRED_PROVENANCE_KEYS = (
    "run_id", "status", "started", "ended", "parameters", "environment", "model", "inversion",
    "normalization", "prior", "sampler", "novelty", "inputs", "quarantined", "timings",
)
#: Keys a run has from the moment it is created (still "writing", or "failed" part-way).
REQUIRED_PROVENANCE_KEYS_ANY_STATUS = ("run_id", "status", "started")


def _dtype_matches(array: zarr.Array[Any], name: str, spec: ArraySpec) -> bool:
    """The contract's data type, or the one runs of earlier versions have (``str``: any string type)."""
    dtype = np.dtype(array.dtype)
    if LEGACY_DTYPES.get(name) == "str" and dtype.kind in "UTO":
        return True
    return dtype == np.dtype(spec.dtype)


def _check_provenance(record: Any, where: str) -> list[str]:
    if not isinstance(record, dict):
        return [f"{where}: attrs[{RUN_ATTR!r}] is missing"]
    problems = []
    try:
        strict_json_dumps(record)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: provenance is not strict JSON ({exc})")
    status = record.get("status")
    if status not in STATUSES:
        problems.append(f"{where}: status {status!r} is not one of {list(STATUSES)}")
    required = REQUIRED_PROVENANCE_KEYS if status == "complete" else REQUIRED_PROVENANCE_KEYS_ANY_STATUS
    missing = [key for key in required if key not in record]
    if missing:
        problems.append(f"{where}: provenance lacks required keys {missing}")
    return problems


def _check_arrays(group: zarr.Group, where: str) -> tuple[list[str], dict[str, zarr.Array[Any]]]:
    problems = []
    arrays: dict[str, zarr.Array[Any]] = {}
    for name, spec in RUN_ARRAYS.items():
        try:
            node = zarr.open_array(group.store, path=f"{group.path}/{name}", mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.NodeNotFoundError, KeyError):
            problems.append(f"{where}: array {name!r} is missing")
            continue
        dims = tuple(node.metadata.dimension_names or ())  # type: ignore[union-attr]  # zarr v2 metadata has no dimension_names; v3 stores only here
        spec = array_spec(name, node.ndim)
        if dims != spec.dims:
            problems.append(f"{where}/{name}: dimension names {list(dims)}, expected {list(spec.dims)}")
        if not _dtype_matches(node, name, spec):
            problems.append(f"{where}/{name}: dtype {node.dtype}, expected {spec.dtype}")
        if node.ndim != len(spec.dims):
            problems.append(f"{where}/{name}: {node.ndim} dimensions, expected {len(spec.dims)}")
            continue
        arrays[name] = node
    return problems, arrays


def _check_sizes(arrays: dict[str, zarr.Array[Any]], record: dict[str, Any], progress: Any,
                 where: str) -> list[str]:
    """Every dimension name must have one size across the run; sample arrays must be whole when complete."""
    problems = []
    sizes: dict[str, dict[str, int]] = {}
    for name, arr in arrays.items():
        for dim, size in zip(array_spec(name, arr.ndim).dims, arr.shape, strict=True):
            sizes.setdefault(dim, {})[name] = size
    complete = record.get("status") == "complete"
    for dim, by_array in sizes.items():
        if dim == "sample" and not complete:
            continue  # a writer may be part-way through an append
        if len(set(by_array.values())) > 1:
            problems.append(f"{where}: arrays disagree on the length of {dim!r}: {by_array}")
    if "samples_physical" in arrays and not isinstance(arrays["samples_physical"].attrs.get("units"), str):
        problems.append(f"{where}/samples_physical: attribute 'units' is missing")
    if complete and isinstance(progress, dict):
        committed = progress.get("samples_committed")
        short = {n: a.shape[0] for n, a in arrays.items() if n in SAMPLE_ARRAYS and a.shape[0] != committed}
        if short:
            problems.append(f"{where}: sample arrays {short} differ from the {committed} committed samples")
        if not progress.get("inputs_written"):
            names = ", ".join(INPUT_ARRAYS)
            problems.append(f"{where}: complete run whose inputs ({names}) were never written")
    return problems


def _check_run(group: zarr.Group, run_id: str) -> list[str]:
    where = f"{RUNS_GROUP}/{run_id}"
    record = group.attrs.get(RUN_ATTR)
    problems = _check_provenance(record, where)
    if isinstance(record, dict) and record.get("run_id") != run_id:
        problems.append(f"{where}: provenance run_id {record.get('run_id')!r} differs from the group name")
    progress = group.attrs.get(PROGRESS_ATTR)
    if not isinstance(progress, dict):
        problems.append(f"{where}: attrs[{PROGRESS_ATTR!r}] is missing")
    array_problems, arrays = _check_arrays(group, where)
    problems += array_problems
    problems += _check_sizes(arrays, record if isinstance(record, dict) else {}, progress, where)
    if isinstance(record, dict) and record.get("status") == "complete" and not has_checksums(group):
        problems.append(f"{where}: complete run without checksums (attrs['ood_checksums'])")
    return problems


def _open_run_group(root: zarr.Group, name: str) -> zarr.Group | str:
    """The run group, or why it cannot be opened (a damaged record is a problem, not an exception)."""
    try:
        node = zarr.open_group(root.store, path=f"{RUNS_GROUP}/{name}", mode="r", zarr_format=3,
                               use_consolidated=False)
    except Exception as exc:  # truncated zarr.json, an array where a group belongs, unreadable storage
        return f"{RUNS_GROUP}/{name}: run group unreadable ({type(exc).__name__}: {exc})"
    return node


def validate_store(store_url: str, *, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Every way the store at ``store_url`` breaks the contract; empty when it is valid."""
    store = zarr_store(store_url, read_only=True, storage_options=storage_options)
    try:
        root = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.MetadataValidationError) as exc:
        return [f"{store_url}: no zarr v3 group here ({exc})"]
    problems = []
    info = root.attrs.get(STORE_ATTR)
    if not isinstance(info, dict):
        problems.append(f"root: attrs[{STORE_ATTR!r}] is missing")
    elif info.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        problems.append(f"root: schema_version {info.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    if RUNS_GROUP not in root:
        return problems
    runs = root[RUNS_GROUP]
    if not isinstance(runs, zarr.Group):
        return [*problems, f"{RUNS_GROUP} is an array, expected a group"]
    infos = list_runs(store_url, from_catalogue=False, storage_options=storage_options)
    for run in infos:
        group = _open_run_group(root, run.run_id)
        problems += [group] if isinstance(group, str) else _check_run(group, run.run_id)
    if isinstance(info, dict) and info.get("schema_version") == SCHEMA_VERSION:
        problems += [p for problems_of_run in catalogue_problems(store, infos).values() for p in problems_of_run]
    return problems


def catalogue_problems(store: Store, infos: list[RunInfo]) -> dict[str, list[str]]:
    """By run id: how the catalogue disagrees with the runs as read from their groups (``infos``): a complete or
    failed run without its entry, a final entry whose status or counts differ (an entry still saying "writing" is
    never trusted: readers read its run), an entry without a run."""
    entries = read_entries(store)
    found: dict[str, list[str]] = {}
    for run in infos:
        entry = entries.pop(run.run_id, None)
        where = f"{CATALOGUE_GROUP}/{run.run_id}"
        if run.status not in FINAL_STATUSES:
            continue  # a writing run's entry may lag its record (readers read the run); broken: named elsewhere
        if entry is None:
            found.setdefault(run.run_id, []).append(f"{where}: no catalogue entry for this {run.status} run "
                                                    "(`ood migrate` writes it)")
            continue
        if entry.get("status") == "writing":
            continue  # its writer stopped after the run's last write, before the entry's: readers read the run
        differ = [key for key, value in (("status", run.status), ("n_samples", run.n_samples),
                                         ("n_inputs", run.n_inputs)) if entry.get(key) != value]
        if differ:
            found.setdefault(run.run_id, []).append(
                f"{where}: entry differs from the run in {differ} (`ood migrate` rewrites it)")
    for run_id in entries:
        found.setdefault(run_id, []).append(f"{CATALOGUE_GROUP}/{run_id}: entry of a run that is not in the store")
    return found


def check_store(store_url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise StoreSchemaError naming every problem when the store breaks the contract."""
    problems = validate_store(store_url, storage_options=storage_options)
    if problems:
        raise StoreSchemaError(store_url, problems)


@dataclass(frozen=True)
class RunCheck:
    """One run's verdict from :func:`audit_store`."""

    run_id: str
    status: str
    """As a person should read it: complete, writing, stale, failed or broken."""
    problems: list[str] = field(default_factory=list)
    """Damage: a complete run that differs from its checksums or breaks the contract, an unreadable record."""
    notes: list[str] = field(default_factory=list)
    """Not damage: why a stale run looks dead, what a run that never completed lacks."""

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_store(
    store_url: str,
    *,
    content: bool = True,
    stale_after: float = STALE_AFTER_S,
    storage_options: Mapping[str, Any] | None = None,
) -> list[RunCheck]:
    """Check every run: the contract (as :func:`validate_store`) and, for complete runs, the checksums.

    ``content=False`` skips reading chunk bytes (metadata and shapes only). A store that cannot be opened
    raises StoreError; everything else is reported per run.
    """
    store = zarr_store(store_url, read_only=True, storage_options=storage_options)
    try:
        root = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.MetadataValidationError) as exc:
        raise StoreError(f"{store_url}: no zarr v3 group here ({exc})") from exc
    checks = []
    infos = list_runs(store_url, stale_after=stale_after, from_catalogue=False, storage_options=storage_options)
    info_attr = root.attrs.get(STORE_ATTR)
    current = isinstance(info_attr, dict) and info_attr.get("schema_version") == SCHEMA_VERSION
    catalogue = catalogue_problems(store, infos) if current else {}
    for info in infos:
        group = _open_run_group(root, info.run_id) if info.status != "broken" else None
        if not isinstance(group, zarr.Group):
            reason = group or f"{RUNS_GROUP}/{info.run_id}: {info.problem}"
            checks.append(RunCheck(info.run_id, "broken", [reason]))
            continue
        problems = _check_run(group, info.run_id)
        if info.status != "complete":  # a run killed part-way lacks things; it never claims to be whole
            notes = [f"stale: {info.problem}"] if info.stale else []
            checks.append(RunCheck(info.run_id, info.shown_status, catalogue.get(info.run_id, []), notes + problems))
            continue
        problems += [p for p in verify_run(group, content=content) if p not in problems]
        checks.append(RunCheck(info.run_id, info.shown_status, problems + catalogue.get(info.run_id, [])))
    return checks
