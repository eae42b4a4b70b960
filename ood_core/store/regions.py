"""Regions of a run's sample arrays, each written by one shard of the sample stage (``--shards``; flows running
them on Dask), at the same time, in any process. Not to be confused with the zarr codec shards that every sample
array is stored in (:mod:`.whole_shards`): a region starts on a codec-shard boundary, so two regions never write
one stored object.

    RunWriter.assign_sample_regions (via :func:`assign_regions`)   the sample arrays, re-made in storage units
                                                                    that regions never share, go to the regions
    RegionWriter(store, run_id, k).append_samples(...)            region k is filled from its start, in any
                                                                    process, in a background thread
    RunWriter.merge_sample_regions(rows) (via :func:`merge_regions`) the regions' rows moved together, committed

A region writer records its progress (rows committed, the checkpoint of its last committed batch, done) in its
own group ``runs/<id>/shards/<k>``, never in the run group's attributes, which one process at a time owns: the
regions are written at the same time in different processes. A region writer killed at any moment is reopened
from its committed rows, and the run's status stays "writing" until the merge, so nothing half-written reads as
complete.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from ood_core.store.appender import (
    BackgroundAppender,
    register_live_appender,
    settle_live_appender,
    storage_units,
)
from ood_core.store.contract import INPUT_ARRAYS, PROGRESS_ATTR, REFERENCE_ARRAYS, RUN_ATTR, SAMPLE_ARRAYS
from ood_core.store.errors import StoreError
from ood_core.store.heartbeat import HEARTBEAT_INTERVAL_S, beat
from ood_core.store.lease import check_holder, require_held
from ood_core.store.opening import attr_dict, node_array, open_store, run_group, sample_array
from ood_core.store.run_arrays import checked_sample_batch, json_object
from ood_core.store.writer import RunWriter

REGIONS_GROUP = "shards"
"""Subgroup of a run with one group per shard (attributes only)."""
REGION_ATTR = "ood_shard"


@dataclass(frozen=True)
class RegionState:
    """What shard ``index`` has committed: rows at the start of its region, its last checkpoint, done or not."""

    index: int
    start: int
    stop: int
    rows: int
    checkpoint: dict[str, Any] | None
    done: bool


def assign_regions(writer: RunWriter, regions: Sequence[tuple[int, int]], unit: int) -> None:
    """Give the run's sample arrays to ``len(regions)`` shards (see RunWriter.assign_sample_regions) and make each
    shard's progress group; done once, by one process, before any shard starts."""
    writer.assign_sample_regions(regions, unit)
    shards = writer.group.require_group(REGIONS_GROUP)
    for index, (start, stop) in enumerate(regions):
        state = {"index": index, "start": int(start), "stop": int(stop), "rows": 0, "checkpoint": None, "done": False}
        shards.create_group(str(index), overwrite=True, attributes={REGION_ATTR: state})


def region_states(writer: RunWriter) -> list[RegionState]:
    """The committed state of every shard of the run, in region order."""
    shards = writer.group[REGIONS_GROUP]
    if not isinstance(shards, zarr.Group):
        raise StoreError(f"run {writer.run_id}: {REGIONS_GROUP} is not a group")
    return [_state(_region_group(shards, writer.run_id, k), k) for k in range(len(writer.sample_regions))]


def merge_regions(writer: RunWriter) -> tuple[int, list[RegionState]]:
    """When every shard is done: move their rows together and commit them in the run; returns (total, states)."""
    states = region_states(writer)
    waiting = [s.index for s in states if not s.done]
    if waiting:
        raise StoreError(f"run {writer.run_id}: shards {waiting} are not done; the run cannot be merged yet")
    return writer.merge_sample_regions([s.rows for s in states]), states


def _region_group(shards: zarr.Group, run_id: str, index: int) -> zarr.Group:
    node = shards.get(str(index))
    if not isinstance(node, zarr.Group):
        raise StoreError(f"run {run_id}: no shard {index} (assign_regions makes them)")
    return node


def _state(group: zarr.Group, index: int) -> RegionState:
    raw = attr_dict(group, REGION_ATTR)
    checkpoint = raw.get("checkpoint")
    return RegionState(index, int(raw["start"]), int(raw["stop"]), int(raw["rows"]),
                      dict(checkpoint) if isinstance(checkpoint, dict) else None, bool(raw["done"]))


class RegionWriter:
    """Writes the samples of one shard into its region of a run, from a background thread, like RunWriter.

    Opening one waits for an earlier writer of the same shard in this process (a retried task) and starts after
    the shard's committed rows; rows past them, written by an attempt that was killed, are overwritten.
    """

    def __init__(
        self, store_url: str, run_id: str, index: int, *, storage_options: Mapping[str, Any] | None = None,
        writer_id: str | None = None,
    ) -> None:
        key = f"{run_id}/{REGIONS_GROUP}/{index}"
        settle_live_appender(store_url, key)
        self._lease_check = (store_url, run_id, writer_id, dict(storage_options or {}))
        self._check_lease()
        root = open_store(store_url, create=False, storage_options=storage_options)
        self._group = run_group(root, store_url, run_id)
        self.run_id, self.index = run_id, index
        self._last_beat = float("-inf")
        self._record = attr_dict(self._group, RUN_ATTR)
        if self._record.get("status") != "writing":
            raise StoreError(f"run {run_id} is {self._record.get('status')!r}; shards write only a 'writing' run")
        progress = attr_dict(self._group, PROGRESS_ATTR)
        shards = self._group[REGIONS_GROUP]
        if not progress.get("sample_regions") or not isinstance(shards, zarr.Group):
            raise StoreError(f"run {run_id}: its sample arrays were not given to shards (assign_regions)")
        self._meta = _region_group(shards, run_id, index)
        state = _state(self._meta, index)
        self.start, self.stop = state.start, state.stop
        self._committed, self._checkpoint, self._done = state.rows, state.checkpoint, state.done
        self._appended = state.rows
        arrays = {name: sample_array(self._group, name) for name in SAMPLE_ARRAYS}
        self._shapes = {name: tuple(arr.shape[1:]) for name, arr in arrays.items()}
        self._appender = BackgroundAppender(
            arrays, self._commit, start=self.start + state.rows, units=storage_units(arrays),
            capacity=int(arrays["samples"].shape[0]), limit=self.stop, trim=False,
            name=f"ood-store-shard-{run_id}-{index}",
        )
        register_live_appender(store_url, key, self._appender)

    # -- what the shard reads

    @property
    def provenance(self) -> dict[str, Any]:
        """The run's ``ood_run`` record as it was when this shard was opened."""
        return dict(self._record)

    def read(self, name: str) -> npt.NDArray[Any]:
        """A whole per-input or reference array of the run (the sample arrays belong to the shards)."""
        if name not in INPUT_ARRAYS and name not in REFERENCE_ARRAYS:
            raise StoreError(f"a shard reads the inputs and references, not {name!r}")
        return np.asarray(node_array(self._group, name)[...])

    @property
    def rows(self) -> int:
        """Rows appended to this shard's region (committed or handed to the background writer)."""
        return self._appended

    @property
    def checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint of the shard's last committed batch when it was opened (where to resume)."""
        return self._checkpoint

    @property
    def done(self) -> bool:
        return self._done

    # -- writing

    def append_samples(self, *, copy: bool = True, checkpoint: dict[str, Any] | None = None,
                       **batch: npt.ArrayLike) -> int:
        """Hand one batch (every sample array, by name) to the background writer; returns the rows appended."""
        if self._done:
            raise StoreError(f"shard {self.index} of run {self.run_id} is done; it takes no more samples")
        owned = checked_sample_batch(batch, self._shapes, copy)
        n = len(owned["samples"])
        if n == 0 and checkpoint is None:
            return self._appended
        self._appender.submit(owned, json_object(checkpoint))
        self._appended += n
        return self._appended

    def flush(self) -> None:
        """Wait until every appended batch is written and committed (re-raises a background error)."""
        self._appender.flush()

    def complete(self) -> None:
        """Flush and mark the shard done: the run can be merged once every shard is."""
        self.flush()
        self._done = True
        self._save()

    def abandon(self) -> None:
        """Write nothing more (the shard failed; a retry reopens it from its committed rows)."""
        self._appender.abandon()

    def _commit(self, stop: int, checkpoint: dict[str, Any] | None) -> None:
        self._committed = stop - self.start
        if checkpoint is not None:
            self._checkpoint = checkpoint
        self._save()

    def _check_lease(self) -> None:
        """A shard writes for the run's writer: that writer's lease must still hold (LeaseLostError otherwise),
        so the shards of a writer that was taken for dead stop rather than interleave with the new writer's."""
        store_url, run_id, writer_id, options = self._lease_check
        if writer_id is None:
            require_held(store_url, run_id)  # shards in the writer's own process
        else:
            check_holder(store_url, run_id, writer_id, storage_options=options)

    def _save(self) -> None:
        now = time.monotonic()
        due = now - self._last_beat >= HEARTBEAT_INTERVAL_S / 2
        if due or self._done:
            self._check_lease()  # before the commit is recorded
        state = {"index": self.index, "start": self.start, "stop": self.stop, "rows": self._committed,
                 "checkpoint": self._checkpoint, "done": self._done}
        self._meta.update_attributes({REGION_ATTR: state})
        # While shards run elsewhere the run's own writer is idle: the shards keep its heartbeat fresh.
        if due:
            self._last_beat = now
            beat(self._group, RUN_ATTR)
