"""Reading runs: :func:`list_runs` (one line a run, a damaged record listed "broken" beside the healthy runs),
:func:`list_run_page` (a page of them, newest first, reading only the page's catalogue entries),
:func:`run_records`, :func:`latest_complete_run_id` and :func:`open_run`, a run as a lazy ``xarray.Dataset``
whose checksums are verified. A run that is not "complete" is never read by accident."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import xarray as xr
import zarr
from zarr.abc.store import Store
from zarr.core.sync import sync

from ood_core.store.catalogue import catalogue_entry, read_entries, resumable_failure
from ood_core.store.consolidation import consolidated_run_is_current
from ood_core.store.contract import FINAL_STATUSES, PROGRESS_ATTR, RUN_ATTR, RUNS_GROUP
from ood_core.store.describe import with_netcdf_note
from ood_core.store.errors import (
    RunNotCompleteError,
    RunNotFoundError,
    StoreError,
    StoreIntegrityError,
    StoreNotFoundError,
)
from ood_core.store.heartbeat import STALE_AFTER_S, stale_reason
from ood_core.store.integrity import verify_run
from ood_core.store.labels import decode_labels, legacy_string_arrays
from ood_core.store.opening import list_names, node_array, open_root_readonly, run_group, run_record, zarr_store

log = logging.getLogger(__name__)

SINCE_SLACK = dt.timedelta(hours=1)
"""With ``since``, run ids made up to this long before it are still read: a run's "started" may differ a little
from the time in its id (the pipeline takes it before the id; a caller may give both), and writers' clocks
differ. Ids made earlier than that are ruled out by their name, without reading their entries."""
_ID_TIME = re.compile(r"^(\d{8}T\d{12})Z-[0-9a-f]{6}$")
_MAX_BATCH = 1024


@dataclass(frozen=True)
class RunInfo:
    """One line of :func:`list_runs`."""

    run_id: str
    status: str
    started: str | None
    ended: str | None
    n_inputs: int
    n_samples: int
    acceptance_rate: float | None
    heartbeat: dict[str, Any] | None = None
    """Last sign of life of a run's writer: {"time", "host", "pid"} (None for runs of older versions)."""
    stale: bool = False
    """A "writing" run whose writer is gone or silent for longer than the stale timeout."""
    problem: str | None = None
    """Why the run is stale, why it failed (its error), or (status "broken") why its record cannot be read."""
    resumable: bool = False
    """A stale run, or a failed run whose failure was the infrastructure's: ``ood run --resume`` takes it up."""
    attempts: int = 0
    """How many writers have worked on the run (provenance ``attempts``; 0 for runs of older versions)."""

    @property
    def shown_status(self) -> str:
        """The status a person should see: "stale" for a dead writing run."""
        return "stale" if self.stale else self.status


def _length(group: zarr.Group, name: str) -> int:
    """First-axis length of an array, 0 while it does not exist yet (a run being created)."""
    try:
        return int(node_array(group, name).shape[0])
    except (KeyError, FileNotFoundError, StoreError):
        return 0


def _run_info(group: zarr.Group, run_id: str, stale_after: float = STALE_AFTER_S) -> RunInfo:
    record = run_record(group)
    progress = group.attrs.get(PROGRESS_ATTR)
    n_inputs = _length(group, "inputs")
    if isinstance(progress, dict) and isinstance(progress.get("samples_committed"), int):
        n_samples = int(progress["samples_committed"])
    else:
        n_samples = _length(group, "samples")
    sampler = record.get("sampler")
    rate = sampler.get("acceptance_rate") if isinstance(sampler, dict) else None
    beat = record.get("heartbeat")
    stale = stale_reason(record, stale_after=stale_after)
    return RunInfo(
        run_id=run_id,
        status=str(record.get("status", "unknown")),
        started=record.get("started"),
        ended=record.get("ended"),
        n_inputs=n_inputs,
        n_samples=n_samples,
        acceptance_rate=float(rate) if isinstance(rate, (int, float)) else None,
        heartbeat=dict(beat) if isinstance(beat, dict) else None,
        stale=stale is not None,
        problem=stale or (str(record.get("error")) if record.get("status") == "failed" else None),
        resumable=stale is not None or bool(resumable_failure(record)),
        attempts=len(record.get("attempts") or []),
    )


def _run_folders(root: zarr.Group) -> list[str]:
    """Names under ``runs/`` as stored (one listing), without parsing any run's metadata."""
    prefix = f"{root.path}/{RUNS_GROUP}".lstrip("/")
    names = list_names(root.store, prefix)
    return sorted(n for n in names if n != "zarr.json" and not n.endswith(".partial") and "/" not in n)


def _is_run(root: zarr.Group, name: str) -> bool:
    """A folder holding nothing but unfinished writes (a process killed while creating the group) is no run."""
    prefix = f"{root.path}/{RUNS_GROUP}/{name}/".lstrip("/")
    return bool(sync(_holds_data(root.store, prefix)))


async def _holds_data(store: Store, prefix: str) -> bool:
    async for key in store.list_prefix(prefix):
        if key.startswith(prefix) and not key.endswith(".partial"):
            return True
    return False


def _open_run_readonly(root: zarr.Group, name: str) -> zarr.Group:
    return zarr.open_group(root.store, path=f"{root.path}/{RUNS_GROUP}/{name}".lstrip("/"), mode="r",
                           zarr_format=3, use_consolidated=False)


def _safe_run_info(root: zarr.Group, name: str, stale_after: float) -> RunInfo:
    """The run's line, or a "broken" line saying why its group or record cannot be read."""
    try:
        node = _open_run_readonly(root, name)
        if not isinstance(node.attrs.get(RUN_ATTR), dict):
            raise StoreError(f"attrs[{RUN_ATTR!r}] is missing")
        return _run_info(node, name, stale_after)
    except Exception as exc:  # a damaged record must not hide the healthy runs beside it
        reason = f"run record unreadable ({type(exc).__name__}: {exc})"
        return RunInfo(name, "broken", None, None, 0, 0, None, problem=reason)


def _entry_info(entry: Mapping[str, Any]) -> RunInfo:
    """The line of a complete or failed run, from its catalogue entry."""
    rate = entry.get("acceptance_rate")
    return RunInfo(
        run_id=str(entry["run_id"]), status=str(entry.get("status")), started=entry.get("started"),
        ended=entry.get("ended"), n_inputs=int(entry.get("n_inputs") or 0), n_samples=int(entry.get("n_samples") or 0),
        acceptance_rate=float(rate) if isinstance(rate, (int, float)) else None,
        problem=str(entry.get("error")) if entry.get("status") == "failed" else None,
        resumable=bool(entry.get("resumable")),
        attempts=int(entry.get("attempts") or 0),
    )


def _catalogued(root: zarr.Group, names: list[str], from_catalogue: bool) -> list[tuple[str, dict[str, Any] | None]]:
    """The runs among ``names`` (run folders), in their order, each with its catalogue entry when that entry is
    final (complete or failed: nothing in the run changes any more) and None when the run itself must be read
    (writing, or no entry). Reads the entries of ``names`` only."""
    entries = read_entries(root.store, names) if from_catalogue else {}
    runs: list[tuple[str, dict[str, Any] | None]] = []
    for name in names:
        entry = entries.get(name)
        if entry is not None and entry.get("status") in FINAL_STATUSES:
            runs.append((name, entry))
        elif entry is not None or _is_run(root, name):
            runs.append((name, None))
    return runs


@dataclass(frozen=True)
class RunPage:
    """One page of :func:`list_run_page`."""

    runs: list[RunInfo]
    total: int
    """Run folders in the store (one listing of ``runs/``)."""
    unread: int
    """Runs neither read nor ruled out by ``since``: how many runs are not shown without a filter; with one, how
    many more runs might match. 0 when every matching run is in ``runs``."""


def started_since(started: str | None, since: dt.datetime) -> bool:
    """True when the ISO time ``started`` (UTC unless it says) is at or after ``since`` (an aware datetime)."""
    try:
        when = dt.datetime.fromisoformat(str(started))
    except ValueError:
        return False
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)) >= since


def _older_than(name: str, since: dt.datetime) -> bool:
    """True for a run id made by :func:`~.provenance.new_run_id` more than SINCE_SLACK before ``since``."""
    match = _ID_TIME.match(name)
    try:
        cutoff = (since - SINCE_SLACK).astimezone(dt.UTC)
    except OverflowError:  # since within SINCE_SLACK of year 1: nothing is older
        return False
    return match is not None and cutoff.year >= 1000 and match.group(1) < f"{cutoff:%Y%m%dT%H%M%S%f}"


def _read_page(root: zarr.Group, names: list[str], limit: int | None, keep: Callable[[RunInfo], bool],
               from_catalogue: bool, stale_after: float) -> tuple[list[RunInfo], int]:
    """The runs of ``names`` that ``keep`` accepts, in that order, read batch by batch (only the batch's entries)
    until ``limit`` are found (None: all), and how many names were used up."""
    found: list[RunInfo] = []
    done, batch = 0, limit or len(names)
    while done < len(names) and (limit is None or len(found) < limit):
        chunk = names[done:done + batch]
        done += len(chunk)
        for name, entry in _catalogued(root, chunk, from_catalogue):
            info = _entry_info(entry) if entry is not None else _safe_run_info(root, name, stale_after)
            if keep(info):
                found.append(info)
                if limit is not None and len(found) == limit:
                    done -= len(chunk) - chunk.index(name) - 1
                    break
        batch = min(2 * batch, _MAX_BATCH)  # a rare match: read more at a time
    return found, done


def list_run_page(
    store_url: str,
    *,
    limit: int | None = 50,
    newest_first: bool = True,
    status: str | None = None,
    since: dt.datetime | None = None,
    stale_after: float = STALE_AFTER_S,
    from_catalogue: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> RunPage:
    """A page of at most ``limit`` runs (None or 0: all), newest first unless ``newest_first`` is False.

    Runs are in run-id order, which is creation-time order for ids made by :func:`~.provenance.new_run_id`.
    One listing of ``runs/`` (names only), then only the entries of the page are read, so a page costs the same
    at the 10,000th run as at the 10th. ``status`` keeps runs whose status or shown status ("stale") is it;
    ``since`` (UTC unless it says) keeps runs started at or after it: entries are read a batch at a time until
    the page is full, and with ``since`` ids made more than :data:`SINCE_SLACK` before it are not read at all.
    Each line is as in :func:`list_runs`.
    """
    root = open_root_readonly(store_url, storage_options)
    names = _run_folders(root)
    total = len(names)
    if since is not None:
        since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
        names = [name for name in names if not _older_than(name, since)]
    if newest_first:
        names.reverse()

    def keep(info: RunInfo) -> bool:
        return ((status is None or status in (info.status, info.shown_status))
                and (since is None or started_since(info.started, since)))

    runs, used = _read_page(root, names, limit or None, keep, from_catalogue, stale_after)
    return RunPage(runs=runs, total=total, unread=len(names) - used)


def list_runs(
    store_url: str,
    *,
    include_incomplete: bool = True,
    stale_after: float = STALE_AFTER_S,
    from_catalogue: bool = True,
    limit: int | None = None,
    newest_first: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[RunInfo]:
    """Every run in the store, oldest first (run ids sort by time); the newest ``limit`` with ``limit`` and
    ``newest_first`` (a page: :func:`list_run_page`, which also says how many runs it left out).

    Complete and failed runs are listed from the run catalogue (:mod:`.catalogue`: one small entry a run, no
    run group opened); writing runs, and runs without an entry, from their groups. ``from_catalogue=False``
    reads every run group (what :func:`~ood_core.store.schema.audit_store` does).
    A run whose group or record cannot be read is listed with status "broken" and the reason in ``problem``;
    a "writing" run whose writer is gone, or silent for ``stale_after`` seconds, has ``stale`` set.
    """
    return list_run_page(store_url, limit=limit, newest_first=newest_first,
                         status=None if include_incomplete else "complete", stale_after=stale_after,
                         from_catalogue=from_catalogue, storage_options=storage_options).runs


def run_entries(store_url: str, *, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The catalogue entry of every run (:func:`.catalogue.catalogue_entry`), oldest first; a run that is still
    writing, or has no entry, gets one made from its record; an unreadable run is left out. Empty when there is
    no store yet."""
    try:
        root = open_root_readonly(store_url, storage_options)
    except StoreNotFoundError:
        return []
    out = []
    for name, entry in _catalogued(root, _run_folders(root), True):
        if entry is None:
            try:
                group = _open_run_readonly(root, name)
                entry = catalogue_entry(run_record(group), n_inputs=_length(group, "inputs"),
                                        n_samples=_run_info(group, name).n_samples)
            except Exception as exc:  # an unreadable run has no entry to offer; list_runs names it "broken"
                log.warning("%s: run %s skipped, its record is unreadable (%s)", store_url, name, exc)
                continue
        out.append(entry)
    return out


def run_records(store_url: str, *, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The provenance record (``ood_run``) of every run, oldest first; empty when there is no store yet.
    Reads every run group: to find runs by status, inputs or flow run, :func:`run_entries` reads the catalogue."""
    try:
        root = open_root_readonly(store_url, storage_options)
    except StoreNotFoundError:
        return []
    records = []
    for name in [n for n in _run_folders(root) if _is_run(root, n)]:
        try:
            group = _open_run_readonly(root, name)
        except Exception as exc:  # an unreadable run has no record to offer; list_runs names it "broken"
            log.warning("%s: run %s skipped, its record is unreadable (%s)", store_url, name, exc)
            continue
        records.append(run_record(group))
    return records


def latest_complete_run_id(store_url: str, *, storage_options: Mapping[str, Any] | None = None) -> str:
    """Id of the newest complete run; RunNotFoundError when there is none."""
    newest = list_runs(store_url, include_incomplete=False, limit=1, newest_first=True,
                       storage_options=storage_options)
    if not newest:
        raise RunNotFoundError(f"{store_url}: no complete run in this store")
    return newest[0].run_id


def open_run(
    store_url: str,
    run_id: str | None = None,
    *,
    allow_incomplete: bool = False,
    chunks: Any = "auto",
    verify: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """A run as a lazy (dask) ``xarray.Dataset``; the latest complete run when ``run_id`` is None.

    Provenance is in ``ds.attrs["ood_run"]``. A run that is not complete raises RunNotCompleteError unless
    ``allow_incomplete``, in which case the sample dimension is cut to the committed samples.
    ``chunks=None`` gives numpy-backed variables instead of dask.

    A complete run is checked against the checksums recorded when it completed and StoreIntegrityError
    names each damaged array. ``verify=True`` (default) reads every stored chunk once to hash it (bytes as
    stored, no decompression); ``verify=False`` checks only the arrays' metadata, for very large runs.
    """
    if run_id is None:
        run_id = latest_complete_run_id(store_url, storage_options=storage_options)
    root = open_root_readonly(store_url, storage_options)
    group = run_group(root, store_url, run_id)
    info = _run_info(group, run_id)
    if info.status != "complete" and not allow_incomplete:
        raise RunNotCompleteError(
            f"{store_url}: run {run_id} is {info.status!r}, not complete "
            "(pass allow_incomplete=True to read it anyway)"
        )
    problems = verify_run(group, content=verify)  # metadata always (cheap), chunk contents when verify
    if problems:
        raise StoreIntegrityError(store_url, run_id, problems)
    store = zarr_store(store_url, read_only=True, storage_options=storage_options)
    consolidated = info.status == "complete" and consolidated_run_is_current(store, run_id, info.n_samples)
    with legacy_string_arrays():  # runs of earlier versions hold string arrays zarr warns about
        if consolidated:  # the run group as a store of its own: its zarr.json holds the whole run
            run_store = zarr_store(f"{store_url.rstrip('/')}/{RUNS_GROUP}/{run_id}", read_only=True,
                                   storage_options=storage_options)
            ds: xr.Dataset = xr.open_zarr(run_store, consolidated=True, chunks=chunks, zarr_format=3)
        else:
            ds = xr.open_zarr(store, group=f"{RUNS_GROUP}/{run_id}", consolidated=False, chunks=chunks,
                              zarr_format=3)
    if "sample" in ds.dims and ds.sizes["sample"] != info.n_samples:
        ds = ds.isel(sample=slice(0, info.n_samples))
    ds = decode_labels(ds)
    ds.attrs = with_netcdf_note(ds.attrs)
    return ds

