"""Writing one run: :class:`RunWriter` (DESIGN section 5).

Status protocol: a run is created "writing" and flipped to "complete" by :meth:`RunWriter.complete` only
after every array is whole; :func:`~ood_core.store.readers.open_run` without a run id returns the latest complete
run, so a run that crashed (or was killed) is never read by accident. Appends are written by a background thread
(:mod:`ood_core.store.appender`) in whole codec shards of the sample axis (zarr v3 sharding codec, several
samples per chunk and many chunks per shard); it writes every sample array first and then records the committed
sample count in ``ood_progress``; a resumed writer trims anything beyond it. Completing a run writes the
run group's consolidated metadata (:mod:`.consolidation`). The run's entry in the store's catalogue
(:mod:`.catalogue`) is written when it is created, completes or fails: only its own entry, never the root.

Integrity: the "complete" flip carries per-array checksums (``attrs["ood_checksums"]``, see
:mod:`.integrity`) in the same metadata write. A writing run carries a heartbeat (:mod:`.heartbeat`) so a dead
one reads as stale. The sample arrays can also be handed to region writers (:mod:`.regions`) and taken back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
import zarr.errors

from ood_core.store import attempts
from ood_core.store.appender import (
    BackgroundAppender,
    register_live_appender,
    settle_live_appender,
    storage_units,
)
from ood_core.store.catalogue import catalogue_entry, write_entry
from ood_core.store.consolidation import consolidate_store
from ood_core.store.contract import (
    INPUT_ARRAYS,
    PROGRESS_ATTR,
    REFERENCE_ARRAYS,
    RUN_ARRAYS,
    RUN_ATTR,
    SAMPLE_ARRAYS,
    SCHEMA_VERSION,
    SampleLayout,
    as_dtype,
    check_run_id,
    default_sample_chunk,
    default_shard_samples,
)
from ood_core.store.describe import describe_run, with_netcdf_note
from ood_core.store.errors import StoreError
from ood_core.store.heartbeat import RECORD_LOCK, heartbeat_now, stale_reason, start_heartbeat
from ood_core.store.integrity import CHECKSUM_ATTR, digest_run
from ood_core.store.lease import Claim, check_holder, held, hold, let_go, require_held
from ood_core.store.migration import migrate_store
from ood_core.store.opening import (
    attr_dict,
    node_array,
    open_store,
    run_group,
    run_record,
    runs_group,
    sample_array,
    schema_version,
    zarr_store,
)
from ood_core.store.provenance import json_safe, new_run_id, utc_now_iso
from ood_core.store.recording import RecordingStore
from ood_core.store.run_arrays import (
    checked_sample_batch,
    create_arrays,
    json_object,
    pack_regions,
    remake_sample_arrays,
)

log = logging.getLogger(__name__)


class RunWriter:
    """Writes one run group: inputs once, samples streamed in batches, provenance and status.

    Build one with :meth:`create` (new run), :meth:`open` (go on with a "writing" run) or :meth:`resume` (take up
    a stale or resumably failed run). Each claims the run's lease first (:mod:`.lease`): one writer per run.
    """

    def __init__(
        self, group: zarr.Group, store_url: str, run_id: str,
        storage_options: Mapping[str, Any] | None = None, *, for_writer: str | None = None,
    ) -> None:
        self._group = group
        self.store_url = store_url
        self.run_id = run_id
        self._for_writer = for_writer  # set: this process works for that writer and holds no lease itself
        self._storage_options = dict(storage_options or {})
        self._record: dict[str, Any] = attr_dict(group, RUN_ATTR)
        self._progress: dict[str, Any] = attr_dict(group, PROGRESS_ATTR)
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
        run_id = check_run_id(run_id or new_run_id())
        record = json_safe(dict(provenance))
        assert isinstance(record, dict)
        started = record.get("started") or utc_now_iso()
        progress = {"inputs_written": False, "samples_committed": 0, "completed_stages": []}

        root = _open_for_writing(store_url, create=True, storage_options=storage_options)
        runs = runs_group(root)
        if run_id in runs:
            raise StoreError(f"{store_url}: run {run_id} already exists; runs never share a group")
        claimed = hold(store_url, run_id, storage_options=storage_options)
        record.update(run_id=run_id, status="writing", started=started, ended=None, heartbeat=heartbeat_now())
        record["attempts"] = json_safe(attempts.begin(claimed.lease, "created"))
        try:
            group = runs.create_group(
                run_id, overwrite=False, attributes=with_netcdf_note({RUN_ATTR: record, PROGRESS_ATTR: progress})
            )
        except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as exc:
            let_go(store_url, run_id)
            raise StoreError(f"{store_url}: run {run_id} already exists; runs never share a group") from exc

        create_arrays(group, n_inputs, (channels, height, width), names, units,
                       SampleLayout(sample_chunk, shard, vector_chunk, expected_samples), physical_bands)
        writer = cls(group, store_url, run_id, storage_options)
        writer._write_entry()
        return writer

    @classmethod
    def open(
        cls, store_url: str, run_id: str, *, storage_options: Mapping[str, Any] | None = None,
        for_writer: str | None = None,
    ) -> RunWriter:
        """Go on with a "writing" run: this process's own (a later stage), or one whose writer died (its lease is
        claimed: RunLeasedError while another writer holds it). Sample arrays are trimmed to the committed count.

        ``for_writer``: the writer id of the process this one works for (a Dask worker preparing or merging
        shards): its lease must be live (LeaseLostError otherwise), and none is claimed here.
        """
        settle_live_appender(store_url, run_id)  # an earlier writer of this run in this process finishes first
        root = _open_for_writing(store_url, create=False, storage_options=storage_options)
        group = run_group(root, store_url, run_id)
        status = run_record(group).get("status")
        if status != "writing":
            raise StoreError(f"run {run_id} has status {status!r}; only a 'writing' run can be resumed")
        if for_writer is not None:
            check_holder(store_url, run_id, for_writer, storage_options=storage_options)
        else:
            _take_up(group, store_url, hold(store_url, run_id, storage_options=storage_options), "resumed")
        _refuse_half_created(group, store_url, run_id, storage_options)
        writer = cls(group, store_url, run_id, storage_options, for_writer=for_writer)
        if writer.sample_regions:  # region writers own the sample arrays until the regions are merged
            return writer
        committed = writer.committed_samples
        for arr in writer._samples.values():
            if arr.shape[0] != committed:  # a killed append left rows nobody committed
                arr.resize((committed, *arr.shape[1:]))
        return writer

    @classmethod
    def resume(
        cls, store_url: str, run_id: str, *, how: str = "resumed", storage_options: Mapping[str, Any] | None = None
    ) -> RunWriter:
        """Take up a run whose writer is gone: a stale "writing" run, or a "failed" one whose failure was the
        infrastructure's (provenance ``failure.resumable``). Refused, with the reason: a complete run, a run
        refused for its inputs or settings, a run another live writer holds (RunLeasedError)."""
        root = _open_for_writing(store_url, create=False, storage_options=storage_options)
        group = run_group(root, store_url, run_id)
        record = run_record(group)
        _check_resumable(record, store_url, run_id)
        _take_up(group, store_url, hold(store_url, run_id, storage_options=storage_options), how)
        writer = cls.open(store_url, run_id, storage_options=storage_options)
        writer._write_entry()  # the catalogue says "writing" again
        return writer

    # -- properties

    @property
    def writer_id(self) -> str | None:
        """The id of the writer this process writes for: its own lease's, or the one it was opened for."""
        if self._for_writer is not None:
            return self._for_writer
        lease = held(self.store_url, self.run_id)
        return None if lease is None else lease.writer

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
        values = as_dtype("reference_latents", latents, spec.dtype)
        image = node_array(self._group, "inputs").shape[1:]
        if values.ndim != 4 or values.shape[1:] != image:
            raise StoreError(f"reference_latents: shape {values.shape}, the run expects (reference, *{image})")
        arr = node_array(self._group, "reference_latents")
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
            return np.asarray(node_array(self._group, name)[:stop])
        arr = node_array(self._group, name)
        return np.asarray(arr[...])

    @property
    def n_inputs(self) -> int:
        """Number of inputs of the run (fixed at creation)."""
        return int(node_array(self._group, "inputs").shape[0])

    def record_timing(self, stage: str, seconds: float) -> None:
        """Add one stage's wall time (s) to the provenance ``timings``."""
        timings = dict(self._record.get("timings") or {})
        timings[stage] = round(float(seconds), 3)
        self.update_provenance(timings=timings)

    def _write_fixed(self, data: Mapping[str, npt.ArrayLike]) -> None:
        for name, values in data.items():
            arr = node_array(self._group, name)
            checked = as_dtype(name, values, INPUT_ARRAYS[name].dtype)
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
            raise StoreError(f"run {self.run_id}: its samples are written by shards (ood_core.store.regions)")
        batch = {"samples": samples, "samples_physical": samples_physical, "sample_latents": sample_latents,
                 "sample_seed": sample_seed, "sample_parent": sample_parent,
                 "sample_criteria": sample_criteria,
                 "sample_nearest_input_distance": sample_nearest_input_distance}
        owned = checked_sample_batch(batch, {name: arr.shape[1:] for name, arr in self._samples.items()}, copy)
        n = len(owned["samples"])
        if n == 0 and checkpoint is None:
            return self.n_samples
        self._background().submit(owned, json_object(checkpoint))
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
            length = node_array(self._group, name).shape[0]
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
        self._save(record={"status": "complete", "ended": self._record.get("ended") or utc_now_iso(),
                           "attempts": attempts.end(self._record.get("attempts") or [], "complete")},
                   extra={CHECKSUM_ATTR: checksums})
        self.close()
        self._release_records()
        consolidate_store(self.store_url, run_id=self.run_id, storage_options=self._storage_options)
        self._write_entry()
        self._let_go()

    def fail(self, error: BaseException | str, *, resumable: bool = False, kind: str = "") -> None:
        """Mark the run "failed" with the error (readers skip it); ``resumable``: the failure was the
        infrastructure's, so :meth:`resume` may take the run up again from its committed work."""
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
        else:
            message = str(error)
        if self._appender is not None:
            self._appender.abandon()  # batches not yet committed are dropped, nothing is written after this
        first = (message.strip().splitlines() or [""])[0]
        self._save(record={"status": "failed", "error": message, "ended": utc_now_iso(),
                           "failure": {"resumable": bool(resumable), "kind": kind or None},
                           "attempts": attempts.end(self._record.get("attempts") or [], "failed", error=first,
                                                    resumable=bool(resumable))})
        self.close()
        self._release_records()
        self._write_entry()
        self._let_go()

    def _let_go(self) -> None:
        """Release this process's lease of the run (a writer working for another process holds none)."""
        if self._for_writer is None:
            let_go(self.store_url, self.run_id)

    def _write_entry(self) -> None:
        """This run's catalogue entry as its record says now (best effort: readers read a run without a current
        entry from its group)."""
        try:
            entry = catalogue_entry(self._record, n_inputs=self.n_inputs, n_samples=self.committed_samples)
            write_entry(zarr_store(self.store_url, storage_options=self._storage_options), entry)
        except Exception as exc:  # the run is as it is either way; the catalogue only lists it
            log.warning("%s: catalogue entry of run %s not written (%r); readers read the run itself",
                        self.store_url, self.run_id, exc)

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
        if self._for_writer is None:
            require_held(self.store_url, self.run_id)  # a writer whose lease was taken over writes no more
        with self._save_lock, RECORD_LOCK:
            self._record.update(record or {})
            self._progress.update(progress or {})
            if self._record.get("status") == "writing":
                self._record["heartbeat"] = heartbeat_now()
            self._group.update_attributes({RUN_ATTR: self._record, PROGRESS_ATTR: self._progress, **(extra or {})})

    # -- background appends (ood_core.store.appender)

    def _background(self) -> BackgroundAppender:
        if self._appender is None:
            self._appender = BackgroundAppender(
                self._samples, self._commit, start=self.committed_samples, units=storage_units(self._samples),
                capacity=int(self._samples["samples"].shape[0]),
                name=f"ood-store-appender-{self.run_id}",
            )
            register_live_appender(self.store_url, self.run_id, self._appender)
        return self._appender

    def _commit(self, stop: int, checkpoint: dict[str, Any] | None) -> None:
        """Called by the appender thread once every sample array holds rows [0, stop) (a batch end)."""
        update: dict[str, Any] = {"samples_committed": stop}
        if checkpoint is not None:
            update["sample_checkpoint"] = checkpoint
        self._save(progress=update)

    # -- regions: the sample arrays written by several region writers at once (ood_core.store.regions)

    @property
    def sample_regions(self) -> list[tuple[int, int]]:
        """[start, stop) rows of each region while region writers own the sample arrays (empty otherwise)."""
        with self._save_lock:
            regions = self._progress.get("sample_regions") or []
        return [(int(a), int(b)) for a, b in regions]

    def assign_sample_regions(self, regions: Sequence[tuple[int, int]], unit: int) -> None:
        """Hand the sample arrays to region writers: re-make them ``regions[-1][1]`` rows long, stored in units of
        ``unit`` rows (every region starts on a unit, so two regions never write one file), record the regions."""
        self._require_writing()
        self.flush()
        if self.committed_samples or self.n_samples:
            raise StoreError(f"run {self.run_id}: samples were appended already; regions need empty arrays")
        if any(b <= a for a, b in regions) or any(a % unit for a, _ in regions):
            raise StoreError(f"regions {list(regions)} must be non-empty and start on multiples of {unit}")
        self._samples = remake_sample_arrays(self._group, self._samples, int(regions[-1][1]), unit)
        self._save(progress={"sample_regions": [[int(a), int(b)] for a, b in regions]})

    def merge_sample_regions(self, rows: Sequence[int], checkpoint: dict[str, Any] | None = None) -> int:
        """Take the sample arrays back from the region writers, which committed ``rows[k]`` rows at the start of
        region k: move them together (region order), cut the arrays to the total and commit it; returns it."""
        self._require_writing()
        regions = self.sample_regions
        if len(rows) != len(regions) or any(not 0 <= n <= b - a for n, (a, b) in zip(rows, regions, strict=True)):
            raise StoreError(f"rows {list(rows)} do not fit the regions {regions}")
        self._appended = total = pack_regions(self._samples, regions, rows)
        self._save(progress={"samples_committed": total, "sample_regions": [],
                             "sample_checkpoint": json_object(checkpoint)})
        return total


def _open_for_writing(store_url: str, *, create: bool, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    """The root for a writer; a store of an earlier schema version is migrated first (:mod:`.migration`)."""
    root = open_store(store_url, create=create, storage_options=storage_options)
    if schema_version(root) < SCHEMA_VERSION:
        migrate_store(store_url, storage_options=storage_options)
        root = open_store(store_url, create=False, storage_options=storage_options)
    return root


def _refuse_half_created(group: zarr.Group, store_url: str, run_id: str,
                         storage_options: Mapping[str, Any] | None = None) -> None:
    """A run killed while :meth:`RunWriter.create` made its arrays can never be completed: mark it failed."""
    present = {name for name, _ in group.arrays()}
    missing = [name for name in RUN_ARRAYS if name not in present]
    if not missing:
        return
    reason = f"interrupted while the run was being created (arrays {missing} were never made)"
    with RECORD_LOCK:
        record = {**run_record(group), "status": "failed", "error": reason, "ended": utc_now_iso()}
        group.update_attributes({RUN_ATTR: record})
    progress = group.attrs.get(PROGRESS_ATTR)
    committed = int(progress.get("samples_committed", 0)) if isinstance(progress, dict) else 0
    n_inputs = int(node_array(group, "inputs").shape[0]) if "inputs" in present else 0
    try:
        write_entry(zarr_store(store_url, storage_options=storage_options),
                    catalogue_entry(record, n_inputs=n_inputs, n_samples=committed))
    except Exception as exc:  # readers read a run without a current entry from its group
        log.warning("%s: catalogue entry of run %s not written (%r)", store_url, run_id, exc)
    let_go(store_url, run_id)
    raise StoreError(f"{store_url}: run {run_id} cannot be resumed: {reason}; it is now marked failed")


def _check_resumable(record: Mapping[str, Any], store_url: str, run_id: str) -> None:
    """StoreError saying why a run cannot be taken up again (None: it can, once its lease is claimed)."""
    status = record.get("status")
    failure = record.get("failure")
    if status == "failed" and not (isinstance(failure, Mapping) and failure.get("resumable")):
        first = (str(record.get("error") or "no reason recorded").strip().splitlines() or [""])[0]
        raise StoreError(f"{store_url}: run {run_id} was refused ({first}); it stays failed: change what the "
                         f"reason names and start a new run")
    if status not in ("writing", "failed"):
        raise StoreError(f"{store_url}: run {run_id} is {status!r}; only a stale 'writing' run or a failed run "
                         f"whose failure was the infrastructure's can be resumed")


def _take_up(group: zarr.Group, store_url: str, claimed: Claim, how: str) -> None:
    """Record a new attempt when this process has just claimed the run (and flip a failed run back to
    "writing"); nothing when it held the run already."""
    if not claimed.new:
        return
    with RECORD_LOCK:
        record = run_record(group)
        if claimed.replaced is None and claimed.lease.generation == 1 and record.get("status") == "writing" \
                and stale_reason(record) is None and record.get("attempts") is None:
            let_go(store_url, record.get("run_id") or "")
            raise StoreError(f"{store_url}: run {record.get('run_id')} is being written by a writer without a lease "
                             f"(last heartbeat {record.get('heartbeat')}); wait until it reads as stale")
        found = claimed.replaced.dead_reason() if claimed.replaced is not None else stale_reason(record)
        record.update(status="writing", error=None, ended=None, heartbeat=heartbeat_now(),
                      attempts=attempts.begin(claimed.lease, how, record.get("attempts") or [], found=found))
        group.update_attributes({RUN_ATTR: record})
