"""The sample store: a zarr v3 group of runs with provenance (DESIGN section 5).

Layout::

    <store>/            attrs["ood_store"] = {"schema_version": 1, "created": ..., "library": "ood-synth"}
      runs/<run_id>/    attrs["ood_netcdf"] (how to write it as netCDF), attrs["ood_run"] (provenance + status),
                        attrs["ood_progress"] (writer bookkeeping)
        inputs, input_mask, input_latents, reconstructions, reconstruction_psnr   fixed size
        samples, samples_physical, sample_latents, sample_seed, sample_parent,
        sample_criteria, sample_nearest_input_distance                            grow by appends
        criterion                                     index coordinate, the names in attrs["names"]
        sample, input, reference, channel, y, x       index coordinates (at completion; input's attrs["files"])

Only numeric and boolean arrays: every zarr v3 reader opens every array (:mod:`.labels`); :func:`open_run`
gives ``criterion`` as a coordinate of names and ``input_file`` as a coordinate along ``input``.

Status protocol: a run is created "writing" and flipped to "complete" by :meth:`RunWriter.complete` only
after every array is whole; :func:`open_run` without a run id returns the latest complete run, so a run
that crashed (or was killed) is never read by accident. Appends are written by a background thread
(:mod:`ood_core.store.appender`) in whole shards of the sample axis (zarr v3 sharding codec, several samples
per chunk and many chunks per shard); it writes every sample array first and then records the committed
sample count in ``ood_progress``; a resumed writer trims anything beyond it. Completing a run writes the
store's consolidated metadata (:func:`consolidate_store`), so ``xarray.open_zarr(store, group="runs/<id>",
consolidated=True)`` works; the library itself lists and writes runs from the real metadata, never from the
consolidated copy, which only describes runs as they were at the last completion.

Integrity: the "complete" flip carries per-array checksums (``attrs["ood_checksums"]``, see
:mod:`.integrity`) in the same metadata write; :func:`open_run` verifies them by default and names the
damaged array. A writing run carries a heartbeat (:mod:`.heartbeat`) so a dead one reads as stale.
:func:`list_runs` lists every healthy run even when another run's record is unreadable.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr
import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from ood_core.errors import OODError
from ood_core.store.appender import BackgroundAppender
from ood_core.store.describe import describe_run, with_netcdf_note
from ood_core.store.heartbeat import RECORD_LOCK, STALE_AFTER_S, heartbeat_now, stale_reason, start_heartbeat
from ood_core.store.integrity import CHECKSUM_ATTR, digest_run, verify_run
from ood_core.store.labels import create_criterion_coordinate, decode_labels, legacy_string_arrays
from ood_core.store.provenance import json_safe, new_run_id, utc_now_iso
from ood_core.store.recording import RecordingStore

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LIBRARY = "ood-synth"
RUNS_GROUP = "runs"
STATUSES = ("writing", "complete", "failed")
STORE_ATTR = "ood_store"
RUN_ATTR = "ood_run"
PROGRESS_ATTR = "ood_progress"
_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_IMAGE_DIMS = ("channel", "y", "x")


class StoreError(OODError):
    """The store or a run in it cannot be used as asked; the message says why."""


class StoreNotFoundError(StoreError):
    """There is no store at that URL yet."""


class RunNotFoundError(StoreError):
    """No run with that id (or no complete run at all) in the store."""


class RunNotCompleteError(StoreError):
    """The run exists but is still "writing" or has "failed"."""


class StoreIntegrityError(StoreError):
    """A complete run's arrays differ from the checksums recorded when it completed; ``problems`` names them."""

    def __init__(self, store_url: str, run_id: str, problems: list[str]) -> None:
        super().__init__(f"{store_url}: run {run_id} is damaged:\n  " + "\n  ".join(problems))
        self.store_url = store_url
        self.run_id = run_id
        self.problems = list(problems)


@dataclass(frozen=True)
class ArraySpec:
    """Contract of one array in a run group: dimension names and dtype."""

    dims: tuple[str, ...]
    dtype: str


#: Every array of a run group (DESIGN section 5). ``criterion`` is the coordinate of ``sample_criteria``.
INPUT_ARRAYS: dict[str, ArraySpec] = {
    "inputs": ArraySpec(("input", *_IMAGE_DIMS), "float32"),
    "input_mask": ArraySpec(("input", "y", "x"), "bool"),
    "input_latents": ArraySpec(("input", *_IMAGE_DIMS), "float32"),
    "reconstructions": ArraySpec(("input", *_IMAGE_DIMS), "float32"),
    "reconstruction_psnr": ArraySpec(("input",), "float32"),
}
SAMPLE_ARRAYS: dict[str, ArraySpec] = {
    "samples": ArraySpec(("sample", *_IMAGE_DIMS), "float32"),
    "samples_physical": ArraySpec(("sample", "y", "x"), "float32"),
    "sample_latents": ArraySpec(("sample", *_IMAGE_DIMS), "float32"),
    "sample_seed": ArraySpec(("sample",), "int64"),
    "sample_parent": ArraySpec(("sample",), "int32"),
    "sample_criteria": ArraySpec(("sample", "criterion"), "float32"),
    "sample_nearest_input_distance": ArraySpec(("sample",), "float32"),
}
BAND_PHYSICAL = ArraySpec(("sample", "channel", "y", "x"), "float32")
"""``samples_physical`` of a band-group run: one physical plane per band (channel k = band k)."""


def array_spec(name: str, ndim: int) -> ArraySpec:
    """The contract of ``name`` for an array of ``ndim`` dimensions (``samples_physical`` has a band form)."""
    if name == "samples_physical" and ndim == len(BAND_PHYSICAL.dims):
        return BAND_PHYSICAL
    return RUN_ARRAYS[name]


COORDINATE_ARRAYS: dict[str, ArraySpec] = {"criterion": ArraySpec(("criterion",), "int64")}
"""``criterion`` indexes the criteria; their names are its attribute ``names`` (:mod:`.labels`). Runs of earlier
versions stored the names as a string array (:data:`LEGACY_DTYPES`)."""
LEGACY_DTYPES: dict[str, str] = {"criterion": "str"}
"""Data types that runs of earlier versions have and readers still accept (``str``: any string type)."""
REFERENCE_ARRAYS: dict[str, ArraySpec] = {"reference_latents": ArraySpec(("reference", *_IMAGE_DIMS), "float32")}
"""Created empty with the run; the prior stage fills it (in-domain reference latents at t0, count known then)."""
RUN_ARRAYS: dict[str, ArraySpec] = {**INPUT_ARRAYS, **SAMPLE_ARRAYS, **COORDINATE_ARRAYS, **REFERENCE_ARRAYS}


# --------------------------------------------------------------------------------------------- opening


def zarr_store(
    url: str, *, read_only: bool = False, storage_options: Mapping[str, Any] | None = None
) -> Store:
    """A zarr Store for a local path or any fsspec URL (``memory://``, ``s3://`` ...)."""
    if "://" in url and not url.startswith("file://"):
        return FsspecStore.from_url(
            url, storage_options=dict(storage_options or {}), read_only=read_only
        )
    return LocalStore(url.removeprefix("file://"), read_only=read_only)


def _store_attr() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "created": utc_now_iso(), "library": LIBRARY}


def _check_root(root: zarr.Group, url: str) -> None:
    info = root.attrs.get(STORE_ATTR)
    if not isinstance(info, dict):
        raise StoreError(f"{url}: zarr group without attrs[{STORE_ATTR!r}], not an ood-synth store")
    if info.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{url}: store schema_version {info.get('schema_version')!r}, this library reads {SCHEMA_VERSION}"
        )


def check_store_location(url: str) -> None:
    """Refuse a local path that exists but cannot become a store: a file, or a non-empty non-zarr folder.

    An existing folder with files but no ``zarr.json`` is someone's data, never silently made a store.
    """
    if "://" in url and not url.startswith("file://"):
        return
    path = Path(url.removeprefix("file://"))
    if not path.exists():
        return
    if not path.is_dir():
        raise StoreError(f"{url}: exists and is not a folder; give a new folder or an existing ood-synth store")
    if (path / "zarr.json").is_file():
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise StoreError(f"{url}: an existing folder that is not a zarr store ({len(entries)} entries: {shown}); "
                         "give a new or empty folder, or an existing ood-synth store")


def open_store(
    url: str, *, create: bool = True, storage_options: Mapping[str, Any] | None = None
) -> zarr.Group:
    """Open (and by default create) the store's root group for writing.

    Safe when several processes create the same store at once: creation never overwrites, and a
    process that loses the race opens the group the winner made. A local folder that exists, is not
    empty and is not a zarr group is refused (:func:`check_store_location`).
    """
    check_store_location(url)
    # writers record the checksum of every object they write (integrity: no read-back at completion)
    store = RecordingStore(zarr_store(url, storage_options=storage_options))
    try:
        root = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        if not create:
            raise StoreError(f"{url}: no store here (pass create=True to make one)") from exc
        try:
            root = zarr.create_group(store, attributes={STORE_ATTR: _store_attr()}, zarr_format=3)
        except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
            root = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    if STORE_ATTR not in root.attrs and not list(root.keys()):
        root.update_attributes({STORE_ATTR: _store_attr()})  # an empty group someone made: adopt it
    _check_root(root, url)
    return root


def _open_root_readonly(url: str, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    store = zarr_store(url, read_only=True, storage_options=storage_options)
    try:
        root = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise StoreNotFoundError(f"{url}: no store here") from exc
    _check_root(root, url)
    return root


def _runs_group(root: zarr.Group) -> zarr.Group:
    """The ``runs`` group, created if missing; tolerates another process creating it at the same time."""
    for _ in range(3):
        try:
            return root.require_group(RUNS_GROUP)
        except (zarr.errors.ContainsGroupError, FileExistsError):
            continue
    return root.require_group(RUNS_GROUP)


def _array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.path}/{name} is a group, expected an array")
    return node


def sample_array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """A sample array as its writers use it: every chunk is written, also one equal to the fill value (whose
    absence reads the same). zarr forgets this setting of ``create_array`` when an array is opened again, and
    then compares every chunk with the fill value before writing it; whole shards go out as they are staged
    (:mod:`.whole_shards`)."""
    return _array(group, name).with_config({"write_empty_chunks": True})


def _check_run_id(run_id: str) -> str:
    if not _RUN_ID_PATTERN.match(run_id):
        raise StoreError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only (max 128 chars)")
    return run_id


# --------------------------------------------------------------------------------------------- writer


class RunWriter:
    """Writes one run group: inputs once, samples streamed in batches, provenance and status.

    Build one with :meth:`create` (new run) or :meth:`open` (resume a "writing" run).
    """

    def __init__(
        self, group: zarr.Group, store_url: str, run_id: str,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._group = group
        self.store_url = store_url
        self.run_id = run_id
        self._storage_options = dict(storage_options or {})
        self._record: dict[str, Any] = _attr_dict(group, RUN_ATTR)
        self._progress: dict[str, Any] = _attr_dict(group, PROGRESS_ATTR)
        self._samples = {name: sample_array(group, name) for name in SAMPLE_ARRAYS}
        self._save_lock = threading.RLock()  # the appender thread commits while the caller updates provenance
        self._appended = int(self._progress["samples_committed"])
        self._appender: BackgroundAppender | None = None
        self._heartbeat = start_heartbeat(self, group, RUN_ATTR) if self._record.get("status") == "writing" else None

    @classmethod
    def create(
        cls,
        store_url: str,
        *,
        run_id: str | None = None,
        n_inputs: int,
        channels: int,
        height: int,
        width: int,
        criterion_names: Sequence[str],
        provenance: Mapping[str, Any],
        sample_chunk: int | None = None,
        shard_samples: int | None = None,
        vector_chunk: int = 4096,
        expected_samples: int = 0,
        units: str = "",
        physical_bands: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> RunWriter:
        """Create ``runs/<run_id>`` with status "writing" and all its arrays (sample arrays empty).

        ``physical_bands``: a band-group run, whose ``samples_physical`` keeps one plane per channel (band).

        ``sample_chunk`` images per chunk along the sample axis (inputs are always one per chunk), by default
        up to 4 MiB and at most 64 images: the cost of a write is per chunk more than per byte (one sample per
        chunk wrote about 4x slower, 16 per chunk about 1.4x slower than 64 in bench/bench_store.py).
        ``shard_samples`` images per shard (one file; a multiple of ``sample_chunk``), by default about 16 MiB
        of the largest image array and at most 256 images. ``vector_chunk`` entries per chunk of the
        per-sample 1-D/2-D arrays. ``expected_samples``: the sample arrays are made that long up front (no
        resize while appending; readers go by the committed count) and cut to the committed count by
        :meth:`flush` and :meth:`complete`.
        """
        for name, value in (("n_inputs", n_inputs), ("channels", channels), ("height", height),
                            ("width", width), ("sample_chunk", sample_chunk or 1), ("vector_chunk", vector_chunk),
                            ("shard_samples", 1 if shard_samples is None else shard_samples),
                            ("expected_samples + 1", expected_samples + 1)):
            if value < 1:
                raise StoreError(f"{name} must be >= 1, got {value}")
        sample_bytes = 4 * channels * height * width
        sample_chunk = sample_chunk or default_sample_chunk(sample_bytes)
        shard = shard_samples or default_shard_samples(sample_chunk, sample_bytes)
        names = [str(n) for n in criterion_names]
        if not names or len(set(names)) != len(names):
            raise StoreError(f"criterion_names must be non-empty and unique, got {names}")
        run_id = _check_run_id(run_id or new_run_id())
        record = json_safe(dict(provenance))
        assert isinstance(record, dict)
        started = record.get("started") or utc_now_iso()
        record.update(run_id=run_id, status="writing", started=started, ended=None, heartbeat=heartbeat_now())
        progress = {"inputs_written": False, "samples_committed": 0, "completed_stages": []}

        root = open_store(store_url, storage_options=storage_options)
        try:
            group = _runs_group(root).create_group(
                run_id, overwrite=False, attributes=with_netcdf_note({RUN_ATTR: record, PROGRESS_ATTR: progress})
            )
        except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as exc:
            raise StoreError(f"{store_url}: run {run_id} already exists; runs never share a group") from exc

        _create_arrays(group, n_inputs, (channels, height, width), names, units,
                       _SampleLayout(sample_chunk, shard, vector_chunk, expected_samples), physical_bands)
        return cls(group, store_url, run_id, storage_options)

    @classmethod
    def open(
        cls, store_url: str, run_id: str, *, storage_options: Mapping[str, Any] | None = None
    ) -> RunWriter:
        """Resume a "writing" run (e.g. after a crash): sample arrays are trimmed to the committed count."""
        _settle_live_appender(store_url, run_id)  # an earlier writer of this run in this process finishes first
        root = open_store(store_url, create=False, storage_options=storage_options)
        group = _run_group(root, store_url, run_id)
        status = _run_record(group).get("status")
        if status != "writing":
            raise StoreError(f"run {run_id} has status {status!r}; only a 'writing' run can be resumed")
        _refuse_half_created(group, store_url, run_id)
        writer = cls(group, store_url, run_id, storage_options)
        if writer.sample_regions:  # shards own the sample arrays until their regions are merged
            return writer
        committed = writer.committed_samples
        for arr in writer._samples.values():
            if arr.shape[0] != committed:  # a killed append left rows nobody committed
                arr.resize((committed, *arr.shape[1:]))
        return writer

    # -- properties

    @property
    def group(self) -> zarr.Group:
        """The run's zarr group."""
        return self._group

    @property
    def n_samples(self) -> int:
        """Samples appended so far (committed, or handed to the background writer: see :meth:`flush`)."""
        return self._appended

    @property
    def committed_samples(self) -> int:
        """Samples that every array holds and the store has recorded (what a reader or a resumed writer sees)."""
        with self._save_lock:
            return int(self._progress["samples_committed"])

    @property
    def provenance(self) -> dict[str, Any]:
        """A copy of the run's ``ood_run`` record."""
        return dict(self._record)

    # -- data

    def write_inputs(
        self,
        inputs: npt.ArrayLike,
        input_mask: npt.ArrayLike,
        input_latents: npt.ArrayLike,
        reconstructions: npt.ArrayLike,
        reconstruction_psnr: npt.ArrayLike,
    ) -> None:
        """Write the fixed-size per-input arrays (whole arrays, shapes must match the run's)."""
        self._require_writing()
        self._write_fixed({"inputs": inputs, "input_mask": input_mask, "input_latents": input_latents,
                           "reconstructions": reconstructions, "reconstruction_psnr": reconstruction_psnr})
        self._save(progress={"inputs_written": True})

    def write_normalized_inputs(self, inputs: npt.ArrayLike, input_mask: npt.ArrayLike) -> None:
        """Write the normalized model-space inputs and their mask (the run's first stage)."""
        self._require_writing()
        self._write_fixed({"inputs": inputs, "input_mask": input_mask})

    def write_inversion(
        self, input_latents: npt.ArrayLike, reconstructions: npt.ArrayLike, reconstruction_psnr: npt.ArrayLike
    ) -> None:
        """Write the inverted latents at t0, the round-trip images and their PSNR."""
        self._require_writing()
        self._write_fixed({"input_latents": input_latents, "reconstructions": reconstructions,
                           "reconstruction_psnr": reconstruction_psnr})
        self._save(progress={"inputs_written": True})

    def write_reference_latents(self, latents: npt.ArrayLike) -> None:
        """Write (or replace) the in-domain reference latents at t0, shape (reference, channel, y, x)."""
        self._require_writing()
        spec = REFERENCE_ARRAYS["reference_latents"]
        values = _as_dtype("reference_latents", latents, spec.dtype)
        image = _array(self._group, "inputs").shape[1:]
        if values.ndim != 4 or values.shape[1:] != image:
            raise StoreError(f"reference_latents: shape {values.shape}, the run expects (reference, *{image})")
        arr = _array(self._group, "reference_latents")
        arr.resize(values.shape)
        arr[...] = values

    def read(self, name: str, limit: int | None = None) -> npt.NDArray[Any]:
        """One whole array of the run as numpy (the per-sample arrays up to the committed count, or its first
        ``limit`` entries)."""
        if name not in RUN_ARRAYS:
            raise StoreError(f"{name!r} is not an array of the run contract ({', '.join(RUN_ARRAYS)})")
        if name in SAMPLE_ARRAYS:
            self.flush()  # what was appended is read back as written
            stop = self.committed_samples if limit is None else min(limit, self.committed_samples)
            return np.asarray(_array(self._group, name)[:stop])
        arr = _array(self._group, name)
        return np.asarray(arr[...])

    @property
    def n_inputs(self) -> int:
        """Number of inputs of the run (fixed at creation)."""
        return int(_array(self._group, "inputs").shape[0])

    def record_timing(self, stage: str, seconds: float) -> None:
        """Add one stage's wall time (s) to the provenance ``timings``."""
        timings = dict(self._record.get("timings") or {})
        timings[stage] = round(float(seconds), 3)
        self.update_provenance(timings=timings)

    def _write_fixed(self, data: Mapping[str, npt.ArrayLike]) -> None:
        for name, values in data.items():
            arr = _array(self._group, name)
            checked = _as_dtype(name, values, INPUT_ARRAYS[name].dtype)
            if checked.shape != arr.shape:
                raise StoreError(f"{name}: shape {checked.shape}, the run expects {arr.shape}")
            arr[...] = checked

    def append_samples(
        self,
        samples: npt.ArrayLike,
        samples_physical: npt.ArrayLike,
        sample_latents: npt.ArrayLike,
        sample_seed: npt.ArrayLike,
        sample_parent: npt.ArrayLike,
        sample_criteria: npt.ArrayLike,
        sample_nearest_input_distance: npt.ArrayLike,
        *,
        copy: bool = True,
        checkpoint: dict[str, Any] | None = None,
    ) -> int:
        """Hand one batch to the background writer and return the new sample count (:attr:`n_samples`).

        The batch is written to every sample array and then committed by a thread while the caller goes on;
        :meth:`flush` waits for it, and an error of the thread is raised by the next append, flush or complete.
        A commit always covers whole batches; ``checkpoint`` (JSON) is recorded with the commit that covers this
        batch (:attr:`sample_checkpoint`: where a resumed writer goes on). The arrays are copied unless
        ``copy=False``, for callers that hand over fresh arrays they never touch again (the pipeline does).
        """
        self._require_writing()
        if self.sample_regions:
            raise StoreError(f"run {self.run_id}: its samples are written by shards (ood_core.store.shards)")
        batch = {"samples": samples, "samples_physical": samples_physical, "sample_latents": sample_latents,
                 "sample_seed": sample_seed, "sample_parent": sample_parent,
                 "sample_criteria": sample_criteria,
                 "sample_nearest_input_distance": sample_nearest_input_distance}
        owned = checked_sample_batch(batch, {name: arr.shape[1:] for name, arr in self._samples.items()}, copy)
        n = len(owned["samples"])
        if n == 0 and checkpoint is None:
            return self.n_samples
        self._background().submit(owned, _json_object(checkpoint))
        self._appended += n
        return self._appended

    @property
    def sample_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint recorded with the last committed batch (None before any)."""
        with self._save_lock:
            value = self._progress.get("sample_checkpoint")
        return dict(value) if isinstance(value, dict) else None

    def flush(self) -> None:
        """Wait until every appended batch is written and committed, and the sample arrays are cut to the
        committed count; re-raises a background write error."""
        if self._appender is None and self._samples["samples"].shape[0] == self.committed_samples:
            return  # nothing appended and nothing pre-sized
        self._background().flush()

    # -- provenance and status

    def update_provenance(self, **fields: Any) -> None:
        """Merge top-level provenance fields (converted to JSON); status and run id have their own methods."""
        forbidden = {"status", "run_id"} & fields.keys()
        if forbidden:
            raise StoreError(f"update_provenance cannot set {sorted(forbidden)}; use complete() or fail()")
        safe = json_safe(fields)
        assert isinstance(safe, dict)
        self._save(record=safe)

    def mark_stage_complete(self, stage: str) -> None:
        """Record that a pipeline stage finished (after its samples are committed), so a resumed run skips it."""
        self.flush()
        stages: list[str] = self._progress["completed_stages"]
        if stage not in stages:
            self._save(progress={"completed_stages": [*stages, stage]})

    def completed_stages(self) -> list[str]:
        """Stages recorded by :meth:`mark_stage_complete`, in order."""
        return list(self._progress["completed_stages"])

    def problems(self) -> list[str]:
        """Why the run is not whole yet (empty when it can be completed)."""
        found = []
        if not self._progress["inputs_written"]:
            found.append("inputs were never written (call write_inputs)")
        committed = self.committed_samples
        if self.n_samples != committed:
            found.append(f"{self.n_samples - committed} appended samples are not committed yet (call flush)")
        for name in SAMPLE_ARRAYS:  # re-read the metadata from the store, not our cached arrays
            length = _array(self._group, name).shape[0]
            if length != committed:
                found.append(f"{name} has {length} samples, {committed} committed")
        return found

    def complete(self) -> None:
        """Flush, check that every array is whole, flip the run to "complete", then consolidate the store's
        metadata (best effort: a reader falls back to the real metadata when the consolidated copy is stale)."""
        self._require_writing()
        self.flush()
        found = self.problems()
        if found:
            raise StoreError(f"run {self.run_id} is not whole: " + "; ".join(found))
        describe_run(self._group, self._record, self.n_samples)  # long_name, units, coordinates for xarray
        checksums = digest_run(self._group)  # after the flush: every shard is on disk
        # Status and checksums land in one metadata write.
        self._save(record={"status": "complete", "ended": self._record.get("ended") or utc_now_iso()},
                   extra={CHECKSUM_ATTR: checksums})
        self.close()
        self._release_records()
        consolidate_store(self.store_url, run_id=self.run_id, storage_options=self._storage_options)

    def fail(self, error: BaseException | str) -> None:
        """Mark the run "failed" with the error; readers skip it."""
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
        else:
            message = str(error)
        if self._appender is not None:
            self._appender.abandon()  # batches not yet committed are dropped, nothing is written after this
        self._save(record={"status": "failed", "error": message, "ended": utc_now_iso()})
        self.close()
        self._release_records()

    def close(self) -> None:
        """Stop the heartbeat (a writer that is simply dropped stops it too, when collected)."""
        if self._heartbeat is not None:
            self._heartbeat.set()

    def _release_records(self) -> None:
        """The run is written for good: the checksums recorded as its objects were written are not needed."""
        store = self._group.store
        if isinstance(store, RecordingStore):
            store.release(self._group.path)

    def _require_writing(self) -> None:
        if self._record.get("status") != "writing":
            raise StoreError(f"run {self.run_id} is {self._record.get('status')!r}, no more writes")

    def _save(
        self,
        record: Mapping[str, Any] | None = None,
        progress: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply updates to the records and write both in one metadata write, so status and committed count
        never disagree on disk; under the lock that the appender thread's commits take too, and the
        process-wide record lock the heartbeat thread takes. A writing run's heartbeat is refreshed."""
        with self._save_lock, RECORD_LOCK:
            self._record.update(record or {})
            self._progress.update(progress or {})
            if self._record.get("status") == "writing":
                self._record["heartbeat"] = heartbeat_now()
            self._group.update_attributes({RUN_ATTR: self._record, PROGRESS_ATTR: self._progress, **(extra or {})})

    # -- background appends (ood_core.store.appender)

    def _background(self) -> BackgroundAppender:
        if self._appender is None:
            units = {name: int((arr.shards or arr.chunks)[0]) for name, arr in self._samples.items()}
            self._appender = BackgroundAppender(
                self._samples, self._commit, start=self.committed_samples, units=units,
                capacity=int(self._samples["samples"].shape[0]),
                name=f"ood-store-appender-{self.run_id}",
            )
            _LIVE_APPENDERS[(self.store_url, self.run_id)] = self._appender
        return self._appender

    def _commit(self, stop: int, checkpoint: dict[str, Any] | None) -> None:
        """Called by the appender thread once every sample array holds rows [0, stop) (a batch end)."""
        update: dict[str, Any] = {"samples_committed": stop}
        if checkpoint is not None:
            update["sample_checkpoint"] = checkpoint
        self._save(progress=update)

    # -- regions: the sample arrays written by several shards at once (ood_core.store.shards)

    @property
    def sample_regions(self) -> list[tuple[int, int]]:
        """[start, stop) rows of each shard while shards own the sample arrays (empty otherwise)."""
        with self._save_lock:
            regions = self._progress.get("sample_regions") or []
        return [(int(a), int(b)) for a, b in regions]

    def assign_sample_regions(self, regions: Sequence[tuple[int, int]], unit: int) -> None:
        """Hand the sample arrays to shards: re-make them ``regions[-1][1]`` rows long, stored in units of ``unit``
        rows (every region starts on a unit, so two shards never write one file), and record the regions."""
        self._require_writing()
        self.flush()
        if self.committed_samples or self.n_samples:
            raise StoreError(f"run {self.run_id}: samples were appended already; regions need empty arrays")
        if any(b <= a for a, b in regions) or any(a % unit for a, _ in regions):
            raise StoreError(f"regions {list(regions)} must be non-empty and start on multiples of {unit}")
        rows = int(regions[-1][1])
        units = str(self._samples["samples_physical"].attrs.get("units", ""))
        image_bytes = 4 * int(np.prod(self._samples["samples"].shape[1:]))
        layout = _SampleLayout(math.gcd(unit, default_sample_chunk(image_bytes)), unit, unit, rows)
        for name in SAMPLE_ARRAYS:
            rest = tuple(self._samples[name].shape[1:])
            spec = array_spec(name, 1 + len(rest))
            self._samples[name] = self._group.create_array(
                name, shape=(rows, *rest), dtype=spec.dtype, dimension_names=spec.dims, fill_value=_fill(spec.dtype),
                attributes={"units": units} if name == "samples_physical" else None, overwrite=True,
                **_sample_chunking(rest, layout),
            )
        self._save(progress={"sample_regions": [[int(a), int(b)] for a, b in regions]})

    def merge_sample_regions(self, rows: Sequence[int], checkpoint: dict[str, Any] | None = None) -> int:
        """Take the sample arrays back from the shards, which committed ``rows[k]`` rows at the start of region k:
        move them together (region order), cut the arrays to the total and commit it; returns the total."""
        self._require_writing()
        regions = self.sample_regions
        if len(rows) != len(regions) or any(not 0 <= n <= b - a for n, (a, b) in zip(rows, regions, strict=True)):
            raise StoreError(f"rows {list(rows)} do not fit the regions {regions}")
        total = 0
        for n, (a, _) in zip(rows, regions, strict=True):
            if n and a != total:
                _move_rows(self._samples, a, total, n)
            total += n
        for arr in self._samples.values():
            arr.resize((total, *arr.shape[1:]))
        self._appended = total
        self._save(progress={"samples_committed": total, "sample_regions": [],
                             "sample_checkpoint": _json_object(checkpoint)})
        return total


_LIVE_APPENDERS: weakref.WeakValueDictionary[tuple[str, str], BackgroundAppender] = weakref.WeakValueDictionary()
"""The background appender of each run written by this process (a reopened run waits for the old one)."""


def _settle_live_appender(store_url: str, run_id: str) -> None:
    """Let an earlier writer of the same run in this process write out what it was handed, so a reopened writer
    (a retried task) trims and continues from a committed count that nobody changes behind its back."""
    appender = _LIVE_APPENDERS.pop((store_url, run_id), None)
    if appender is None:
        return
    try:
        appender.flush()
    except OODError as exc:
        log.warning("run %s: the earlier writer's background append failed (%s); resuming from its last commit",
                    run_id, exc)
    appender.abandon()


def default_sample_chunk(bytes_per_sample: int, target_bytes: int = 4 << 20, most: int = 64) -> int:
    """Images per chunk: as many as fit in ``target_bytes``, at least 1, at most ``most``."""
    return max(1, min(most, target_bytes // max(1, bytes_per_sample)))


def default_shard_samples(sample_chunk: int, bytes_per_sample: int, target_bytes: int = 16 << 20,
                          most: int = 256) -> int:
    """Images per shard: a multiple of ``sample_chunk`` near ``target_bytes`` per shard, at most ``most``."""
    chunks = max(1, min(most // sample_chunk, target_bytes // max(1, bytes_per_sample * sample_chunk)))
    return sample_chunk * chunks


def _sample_chunking(rest: tuple[int, ...], layout: _SampleLayout) -> dict[str, Any]:
    """Chunking of one sample array: images sharded (``layout.shard`` samples per shard, ``layout.chunk`` per
    inner chunk), per-sample vectors in plain chunks of ``layout.vector_chunk`` entries."""
    if len(rest) < 2:
        return {"chunks": (layout.vector_chunk, *rest)}
    shard = max(layout.chunk, layout.shard - layout.shard % layout.chunk)
    # Uncompressed: generated float images shrink by under 10 % with zstd (46.3 of 50.3 MB on the data of
    # bench/bench_store.py) for a slower write. Every written chunk holds data, so skip the fill-value scan.
    return {"chunks": (layout.chunk, *rest), "shards": (shard, *rest), "compressors": None,
            "config": {"write_empty_chunks": True}}



@dataclass(frozen=True)
class _SampleLayout:
    """Chunking of the per-sample arrays: ``chunk`` images per chunk, ``shard`` per shard, ``vector_chunk``
    entries per chunk of the 1-D/2-D ones, ``expected`` samples of room made up front."""

    chunk: int
    shard: int
    vector_chunk: int
    expected: int


def _create_arrays(
    group: zarr.Group,
    n_inputs: int,
    image: tuple[int, int, int],
    criterion_names: list[str],
    units: str,
    layout: _SampleLayout,
    physical_bands: bool = False,
) -> None:
    """The arrays of a new run group: per-input arrays at full size, per-sample arrays ``layout.expected`` long
    (they grow; readers go by the committed count)."""
    names = criterion_names
    _, height, width = image
    fixed_shapes = {
        "inputs": (n_inputs, *image), "input_mask": (n_inputs, height, width),
        "input_latents": (n_inputs, *image), "reconstructions": (n_inputs, *image),
        "reconstruction_psnr": (n_inputs,),
    }
    for name, shape in fixed_shapes.items():
        spec = INPUT_ARRAYS[name]
        group.create_array(name, shape=shape, dtype=spec.dtype, chunks=(1, *shape[1:]),
                           dimension_names=spec.dims, fill_value=_fill(spec.dtype))
    trailing = {
        "samples": image, "samples_physical": image if physical_bands else (height, width), "sample_latents": image,
        "sample_seed": (), "sample_parent": (), "sample_criteria": (len(names),),
        "sample_nearest_input_distance": (),
    }
    for name, rest in trailing.items():
        spec = array_spec(name, 1 + len(rest))
        group.create_array(
            name, shape=(layout.expected, *rest), dtype=spec.dtype, dimension_names=spec.dims,
            fill_value=_fill(spec.dtype),
            attributes={"units": units} if name == "samples_physical" else None,
            **_sample_chunking(rest, layout),
        )
    spec = REFERENCE_ARRAYS["reference_latents"]
    group.create_array("reference_latents", shape=(0, *image), dtype=spec.dtype, chunks=(64, *image),
                       dimension_names=spec.dims, fill_value=_fill(spec.dtype))
    create_criterion_coordinate(group, names)


def _json_object(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    safe = json_safe(dict(value))
    assert isinstance(safe, dict)
    return safe


def checked_sample_batch(
    batch: Mapping[str, npt.ArrayLike], shapes: Mapping[str, tuple[int, ...]], copy: bool
) -> dict[str, npt.NDArray[Any]]:
    """A batch of every sample array in the contract's dtypes, one length, the run's per-sample shapes; arrays
    the caller passed are copied when ``copy`` (a background thread writes them later)."""
    checked = {name: _as_dtype(name, values, SAMPLE_ARRAYS[name].dtype) for name, values in batch.items()}
    lengths = {name: values.shape[0] if values.ndim else -1 for name, values in checked.items()}
    if set(checked) != set(SAMPLE_ARRAYS):
        raise StoreError(f"a sample batch needs {sorted(SAMPLE_ARRAYS)}, got {sorted(checked)}")
    if len(set(lengths.values())) != 1 or -1 in lengths.values():
        raise StoreError(f"append_samples: batch arrays differ in length: {lengths}")
    for name, values in checked.items():
        if values.shape[1:] != tuple(shapes[name]):
            raise StoreError(f"{name}: per-sample shape {values.shape[1:]}, the run expects {tuple(shapes[name])}")
    # a converted array is already a copy nobody else holds
    return {name: v.copy() if copy and v is batch[name] else v for name, v in checked.items()}


def _move_rows(arrays: Mapping[str, zarr.Array[Any]], source: int, target: int, count: int,
               step: int = 4096) -> None:
    """Copy rows [source, source + count) of every array to [target, ...), target < source, in pieces."""
    for arr in arrays.values():
        for offset in range(0, count, step):
            n = min(step, count - offset)
            arr[target + offset:target + offset + n] = arr[source + offset:source + offset + n]


def _attr_dict(group: zarr.Group, name: str) -> dict[str, Any]:
    """A JSON-object attribute of a run group (StoreError naming the run when it is missing or not an object)."""
    value = group.attrs.get(name)
    if not isinstance(value, dict):
        raise StoreError(f"{group.path}: attribute {name!r} is missing or not a JSON object; not a run written here")
    return dict(value)


def _refuse_half_created(group: zarr.Group, store_url: str, run_id: str) -> None:
    """A run killed while :meth:`RunWriter.create` made its arrays can never be completed: mark it failed."""
    present = {name for name, _ in group.arrays()}
    missing = [name for name in RUN_ARRAYS if name not in present]
    if not missing:
        return
    reason = f"interrupted while the run was being created (arrays {missing} were never made)"
    with RECORD_LOCK:
        record = {**_run_record(group), "status": "failed", "error": reason, "ended": utc_now_iso()}
        group.update_attributes({RUN_ATTR: record})
    raise StoreError(f"{store_url}: run {run_id} cannot be resumed: {reason}; it is now marked failed")


def _fill(dtype: str) -> Any:
    # NaN marks never-written float cells; integers and booleans have no such value.
    return np.nan if dtype.startswith("float") else 0 if dtype != "bool" else False


def _as_dtype(name: str, values: npt.ArrayLike, dtype: str) -> npt.NDArray[Any]:
    array = np.asarray(values)
    target = np.dtype(dtype)
    if target.kind in "iub" and array.dtype.kind not in "iub":
        raise StoreError(f"{name}: expected {dtype} values, got {array.dtype} (refusing a lossy cast)")
    if target.kind == "f" and array.dtype.kind not in "fiu":
        raise StoreError(f"{name}: expected {dtype} values, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=target)


# --------------------------------------------------------------------------------------------- readers


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

    @property
    def shown_status(self) -> str:
        """The status a person should see: "stale" for a dead writing run."""
        return "stale" if self.stale else self.status


def _run_record(group: zarr.Group) -> dict[str, Any]:
    record = group.attrs.get(RUN_ATTR)
    return dict(record) if isinstance(record, dict) else {}


def _run_group(root: zarr.Group, url: str, run_id: str) -> zarr.Group:
    _check_run_id(run_id)
    try:
        node = root[f"{RUNS_GROUP}/{run_id}"]
    except KeyError as exc:
        raise RunNotFoundError(f"{url}: no run {run_id!r} (see list_runs)") from exc
    if not isinstance(node, zarr.Group):
        raise StoreError(f"{url}: runs/{run_id} is not a group")
    return node


def _length(group: zarr.Group, name: str) -> int:
    """First-axis length of an array, 0 while it does not exist yet (a run being created)."""
    try:
        return int(_array(group, name).shape[0])
    except (KeyError, FileNotFoundError, StoreError):
        return 0


def _run_info(group: zarr.Group, run_id: str, stale_after: float = STALE_AFTER_S) -> RunInfo:
    record = _run_record(group)
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
    )


def _run_names(root: zarr.Group) -> list[str]:
    """Names under ``runs/`` as stored, without parsing any run's metadata (one bad record breaks nothing).

    A folder holding nothing but unfinished writes (a process killed while creating the group) is no run.
    """
    prefix = f"{root.path}/{RUNS_GROUP}".lstrip("/")
    names = sync(_list_dir(root.store, prefix))
    candidates = sorted(n for n in names if n != "zarr.json" and not n.endswith(".partial") and "/" not in n)
    return [n for n in candidates if sync(_holds_data(root.store, f"{prefix}/{n}/"))]


async def _list_dir(store: Store, prefix: str) -> list[str]:
    return [name async for name in store.list_dir(prefix)]


async def _holds_data(store: Store, prefix: str) -> bool:
    async for key in store.list_prefix(prefix):
        if key.startswith(prefix) and not key.endswith(".partial"):
            return True
    return False


def _safe_run_info(root: zarr.Group, name: str, stale_after: float) -> RunInfo:
    """The run's line, or a "broken" line saying why its group or record cannot be read."""
    try:
        node = zarr.open_group(root.store, path=f"{root.path}/{RUNS_GROUP}/{name}".lstrip("/"), mode="r",
                               zarr_format=3, use_consolidated=False)
        if not isinstance(node.attrs.get(RUN_ATTR), dict):
            raise StoreError(f"attrs[{RUN_ATTR!r}] is missing")
        return _run_info(node, name, stale_after)
    except Exception as exc:  # a damaged record must not hide the healthy runs beside it
        reason = f"run record unreadable ({type(exc).__name__}: {exc})"
        return RunInfo(name, "broken", None, None, 0, 0, None, problem=reason)


def list_runs(
    store_url: str,
    *,
    include_incomplete: bool = True,
    stale_after: float = STALE_AFTER_S,
    storage_options: Mapping[str, Any] | None = None,
) -> list[RunInfo]:
    """Every run in the store, oldest first (run ids sort by time).

    A run whose group or record cannot be read is listed with status "broken" and the reason in ``problem``;
    a "writing" run whose writer is gone, or silent for ``stale_after`` seconds, has ``stale`` set.
    """
    root = _open_root_readonly(store_url, storage_options)
    infos = [_safe_run_info(root, name, stale_after) for name in _run_names(root)]
    if not include_incomplete:
        infos = [info for info in infos if info.status == "complete"]
    return infos


def run_records(store_url: str, *, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The provenance record (``ood_run``) of every run, oldest first; empty when there is no store yet."""
    try:
        root = _open_root_readonly(store_url, storage_options)
    except StoreNotFoundError:
        return []
    records = []
    for name in _run_names(root):
        try:
            group = zarr.open_group(root.store, path=f"{root.path}/{RUNS_GROUP}/{name}".lstrip("/"), mode="r",
                                    zarr_format=3, use_consolidated=False)
        except Exception as exc:  # an unreadable run has no record to offer; list_runs names it "broken"
            log.warning("%s: run %s skipped, its record is unreadable (%s)", store_url, name, exc)
            continue
        records.append(_run_record(group))
    return records


def latest_complete_run_id(store_url: str, *, storage_options: Mapping[str, Any] | None = None) -> str:
    """Id of the newest complete run; RunNotFoundError when there is none."""
    complete = list_runs(store_url, include_incomplete=False, storage_options=storage_options)
    if not complete:
        raise RunNotFoundError(f"{store_url}: no complete run in this store")
    return complete[-1].run_id


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
    root = _open_root_readonly(store_url, storage_options)
    group = _run_group(root, store_url, run_id)
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
    consolidated = info.status == "complete" and _consolidated_run_is_current(store, info)
    with legacy_string_arrays():  # runs of earlier versions hold string arrays zarr warns about
        ds: xr.Dataset = xr.open_zarr(
            store, group=f"{RUNS_GROUP}/{run_id}", consolidated=consolidated, chunks=chunks, zarr_format=3
        )
    if "sample" in ds.dims and ds.sizes["sample"] != info.n_samples:
        ds = ds.isel(sample=slice(0, info.n_samples))
    ds = decode_labels(ds)
    ds.attrs = with_netcdf_note(ds.attrs)
    return ds


# --------------------------------------------------------------------------------------------- consolidated metadata


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
    return None if group is None else _run_record(group).get("status")


def _consolidated_run_is_current(store: Store, info: RunInfo) -> bool:
    """True when the consolidated copy shows the run complete with all its committed samples (then reading it
    gives the same dataset as the real metadata, for fewer reads on a remote store)."""
    group = _consolidated_run(store, info.run_id)
    if group is None or _run_record(group).get("status") != "complete":
        return False
    try:
        return all(_array(group, name).shape[0] == info.n_samples for name in SAMPLE_ARRAYS)
    except (KeyError, StoreError):
        return False
