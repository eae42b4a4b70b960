"""Background appends of sample batches to a run's arrays, so the caller (the GPU) never waits on the disk.

:class:`BackgroundAppender` owns one writer thread per run writer. The caller hands it whole batches (dicts of
arrays, one entry per sample array) and goes on; the thread gathers them into whole shards of the sample axis,
writes every array, and only then calls ``commit(stop)``, the store's record that rows ``[0, stop)`` are whole.
The commit protocol of the store is therefore unchanged: a process killed at any instant leaves a committed
count that every array holds.

- Bounded: at most ``max_pending`` batches wait in the queue (``submit`` blocks beyond that) plus less than one
  shard in the thread's buffer, so memory does not grow with the number of samples.
- Whole shards: rows are written up to the last shard boundary reached, so a shard is written once in the
  common case. Rows past it wait for more data, for :meth:`flush`, or at most ``commit_interval`` seconds (a
  slow CPU run still commits its batches every few seconds; the partial shard is rewritten later).
- Arrays grow ahead of the data (doubling) so that a resize is rare; they are cut back to the written rows by
  :meth:`flush`. Readers go by the committed count, never by an array's length, until the run is complete.
- Errors raised by the thread are re-raised (as :class:`BackgroundWriteError`, the original as its cause) by
  the next :meth:`submit` or :meth:`flush`; nothing is written after the first error.
- The thread exits after ``idle_exit`` seconds with nothing to do, and restarts on the next batch. It is not a
  daemon thread: at a normal interpreter exit every batch handed over is written and committed first.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from ood_core.errors import OODError
from ood_core.store.errors import BackgroundWriteError
from ood_core.store.whole_shards import ShardLayout, shard_layout, staging_buffer, write_shard

log = logging.getLogger(__name__)

_LEAST_GROWTH_UNITS, _MOST_GROWTH_UNITS = 4, 16

Batch = dict[str, npt.NDArray[Any]]
"""One batch: sample-array name -> rows (first axis = samples), every entry the same length."""

Checkpoint = dict[str, Any] | None
"""What a caller wants recorded with the commit of a batch (e.g. where to resume); None: nothing new."""

Commit = Callable[[int, Checkpoint], None]
"""commit(stop, checkpoint): every array holds rows [0, stop), which ends a batch; checkpoint is that batch's."""


class _Submitted:
    def __init__(self, batch: Batch, checkpoint: Checkpoint) -> None:
        self.batch = batch
        self.checkpoint = checkpoint


class _FlushRequest:
    def __init__(self) -> None:
        self.done = threading.Event()


class _Due:
    """Marker: the buffered rows waited ``commit_interval``; write them."""


DUE = _Due()


class BackgroundAppender:
    """Writes batches to pre-existing zarr arrays along their first axis from a background thread.

    ``arrays``: the arrays to grow (all holding rows ``[0, start)``, all ``capacity`` long);
    ``commit(stop, checkpoint)`` is called after every array holds rows ``[0, stop)``, only ever at the end of a
    submitted batch (so a commit covers whole batches, and carries that batch's checkpoint); ``units``: per
    array, the rows of
    one shard (or of one chunk when the array is not sharded). Each array is written in whole units when it
    can: its rows wait in a staging buffer of one unit until the unit is full (or a flush or
    ``commit_interval`` comes), so no unit is read back and rewritten in the common case. The commit follows
    the slowest array.
    """

    def __init__(
        self,
        arrays: Mapping[str, zarr.Array[Any]],
        commit: Commit,
        *,
        start: int,
        units: Mapping[str, int],
        capacity: int | None = None,
        limit: int | None = None,
        trim: bool = True,
        name: str = "ood-store-appender",
        max_pending: int = 4,
        commit_interval: float = 2.0,
        idle_exit: float = 1.0,
    ) -> None:
        if set(units) != set(arrays) or min(units.values()) < 1 or max_pending < 1:
            raise ValueError(f"need a unit >= 1 for every array and max_pending >= 1, got {dict(units)}, {max_pending}")
        self._arrays = dict(arrays)
        self._commit = commit
        self._units = {name: int(units[name]) for name in self._arrays}
        self._name = name
        self._max_pending = max_pending
        self._commit_interval = commit_interval
        self._idle_exit = idle_exit
        self._limit = limit  # no row at or past it is ever written (a shard's region ends there)
        self._trim_on_flush = trim  # False: the arrays are shared (regions of shards), never resized here
        self._submitted = int(start)  # caller side: rows handed over so far
        self._cond = threading.Condition()
        self._queue: deque[_Submitted | _FlushRequest] = deque()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        # owned by the thread; an array whose unit is one plain shard stages it as the bytes to store (whole_shards)
        layouts = {name: shard_layout(arr) for name, arr in self._arrays.items()}
        self._staged = {name: _Staging(unit, int(start), _whole(layouts[name], unit))
                        for name, unit in self._units.items()}
        self._staged_since = 0.0
        self._committed = int(start)
        self._received = int(start)  # thread side: rows taken from the queue
        self._ends: deque[tuple[int, Checkpoint]] = deque()  # (row after a batch, its checkpoint), not committed
        # the length of every array (all equal, e.g. pre-sized by RunWriter.create; >= start)
        self._capacity = int(start if capacity is None else max(start, capacity))

    # ----------------------------------------------------------------------------------------- caller side

    def submit(self, batch: Batch, checkpoint: Checkpoint = None) -> None:
        """Queue one batch (arrays the caller will not touch again); blocks while ``max_pending`` are queued.
        ``checkpoint`` is handed to ``commit`` with the commit that covers this batch."""
        rows = len(next(iter(batch.values())))
        if self._limit is not None and self._submitted + rows > self._limit:
            raise ValueError(f"{rows} more rows would pass row {self._limit}, the end of this writer's region")
        with self._cond:
            while len(self._queue) >= self._max_pending and self._error is None and not self._abandoned:
                self._cond.wait()
            self._raise_if_failed()
            if self._abandoned:
                raise BackgroundWriteError("this writer was abandoned (the run failed or was reopened)")
            self._queue.append(_Submitted(batch, checkpoint))
            self._submitted += rows
            self._ensure_thread()
            self._cond.notify_all()

    def flush(self) -> None:
        """Block until every batch submitted so far is written and committed; re-raise a background error."""
        request = _FlushRequest()
        with self._cond:
            self._raise_if_failed()
            if self._abandoned:
                return
            self._queue.append(request)
            self._ensure_thread()
            self._cond.notify_all()
        request.done.wait()
        with self._cond:
            self._raise_if_failed()

    def abandon(self) -> None:
        """Drop whatever is queued or buffered and write nothing more (the run failed); waits for a write that is
        under way to end, so no commit happens after this returns."""
        with self._cond:
            self._abandoned = True
            self._release_waiters()
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def error(self) -> BaseException | None:
        """The first error the thread met, if any."""
        return self._error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise BackgroundWriteError(f"writing samples in the background failed: {self._error!r}") from self._error

    def _ensure_thread(self) -> None:  # caller holds the condition
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=False)
            self._thread.start()

    def _release_waiters(self) -> None:  # caller holds the condition: nothing queued will ever be written
        for item in self._queue:
            if isinstance(item, _FlushRequest):
                item.done.set()
        self._queue.clear()

    # ----------------------------------------------------------------------------------------- thread side

    @property
    def _pending_rows(self) -> bool:
        return any(stage.rows for stage in self._staged.values())

    def _next_item(self) -> _Submitted | _FlushRequest | _Due | None:
        """The next queued item, DUE when the staged rows are due, or None: the thread must exit (idle,
        failed or abandoned), decided under the lock so that no batch submitted meanwhile is stranded."""
        with self._cond:
            while not self._queue and not self._abandoned and self._error is None:
                if self._pending_rows:
                    remaining = self._staged_since + self._commit_interval - time.monotonic()
                    if remaining <= 0:
                        return DUE
                    self._cond.wait(remaining)
                elif not self._cond.wait(self._idle_exit) and not self._queue:
                    break
            if self._queue and not self._abandoned and self._error is None:
                item = self._queue.popleft()
                self._cond.notify_all()
                return item
            self._thread = None  # submit() starts a new thread for the next batch
            return None

    def _run(self) -> None:
        while True:
            item = self._next_item()
            if item is None:
                self._drop_staging()
                return
            try:
                if isinstance(item, _FlushRequest):
                    self._write_staged()
                    if self._trim_on_flush:
                        self._trim()
                    item.done.set()
                elif isinstance(item, _Due):
                    self._write_staged()  # commit_interval passed: write the partial units
                else:
                    self._add(item)
            except BaseException as exc:  # recorded and re-raised in the caller's thread
                with self._cond:
                    self._error = exc
                    if isinstance(item, _FlushRequest):
                        item.done.set()
                    self._release_waiters()
                    self._thread = None
                    self._cond.notify_all()
                self._drop_staging()
                return

    def _drop_staging(self) -> None:
        for stage in self._staged.values():
            stage.rows, stage.buffer, stage.shard = 0, None, None

    def _add(self, submitted: _Submitted) -> None:
        """Stage one batch array by array, writing each unit that fills; then commit what every array holds."""
        batch = submitted.batch
        if not self._pending_rows:
            self._staged_since = time.monotonic()
        self._received += len(next(iter(batch.values())))
        self._ends.append((self._received, submitted.checkpoint))
        for name, values in batch.items():
            stage, offset = self._staged[name], 0
            while offset < len(values):
                room = stage.unit - (stage.written + stage.rows) % stage.unit
                take = min(room, len(values) - offset)
                if stage.rows == 0 and take == room and stage.layout is None:  # straight from the batch, no copy
                    self._write_rows(name, values[offset:offset + take])
                else:
                    stage.put(values[offset:offset + take])
                    if take == room:
                        self._write_stage(name, stage)
                offset += take
        self._commit_written()

    def _write_staged(self) -> None:
        for name, stage in self._staged.items():
            if stage.rows:
                self._write_stage(name, stage)
        self._commit_written()

    def _write_stage(self, name: str, stage: _Staging) -> None:
        """Write the staged rows: a whole shard as the bytes it is stored as when it can be, else through zarr."""
        shard = stage.whole_shard()
        if shard is None:
            self._write_rows(name, stage.take())
            return
        start = stage.written
        self._ensure_capacity(start + stage.unit)
        write_shard(self._arrays[name], start // stage.unit, shard)
        stage.take()
        stage.written = start + stage.unit

    def _write_rows(self, name: str, values: npt.NDArray[Any]) -> None:
        """Write ``values`` after the rows this array already holds."""
        stage = self._staged[name]
        start = stage.written
        stop = start + len(values)
        self._ensure_capacity(stop)
        self._arrays[name][start:stop] = values
        stage.written = stop

    def _ensure_capacity(self, stop: int) -> None:
        """Grow every array ahead of the data, all to one length (a metadata write each, so rarely): doubling,
        by 4 to 16 of the largest units at a time. Rows past the commit are never read."""
        if self._capacity >= stop:
            return
        unit = max(self._units.values())
        step = min(max(self._capacity, _LEAST_GROWTH_UNITS * unit), _MOST_GROWTH_UNITS * unit)
        self._capacity = max(stop, self._capacity + step)
        for arr in self._arrays.values():
            arr.resize((self._capacity, *arr.shape[1:]))

    def _commit_written(self) -> None:
        """Commit up to the last batch end that every array holds (rows of a batch half written wait)."""
        written = min(stage.written for stage in self._staged.values())
        stop, checkpoint = self._committed, None
        while self._ends and self._ends[0][0] <= written:
            stop, batch_checkpoint = self._ends.popleft()
            checkpoint = batch_checkpoint if batch_checkpoint is not None else checkpoint
        if stop <= self._committed and checkpoint is None:
            return  # nothing new (an empty batch with a checkpoint still commits it)
        with self._cond:
            if self._abandoned:
                return  # the run failed meanwhile: rows past the commit are trimmed by the next writer
        self._commit(stop, checkpoint)
        self._committed = stop

    def _trim(self) -> None:
        """Cut every array back to the committed rows (they grow ahead of the data, see _write_rows)."""
        if self._capacity > self._committed:
            for arr in self._arrays.values():
                arr.resize((self._committed, *arr.shape[1:]))
            self._capacity = self._committed


def _whole(layout: ShardLayout | None, unit: int) -> ShardLayout | None:
    return layout if layout is not None and layout.rows == unit else None


class _Staging:
    """Rows of one array waiting for their unit (shard or chunk) to fill: a reusable buffer of one unit; with a
    ``layout`` (the unit is one plain shard) the buffer is the shard's bytes as stored, index included."""

    def __init__(self, unit: int, written: int, layout: ShardLayout | None = None) -> None:
        self.unit = unit
        self.written = written
        self.layout = layout
        self.rows = 0
        self.buffer: npt.NDArray[Any] | None = None
        self.shard: npt.NDArray[np.uint8] | None = None

    def put(self, values: npt.NDArray[Any]) -> None:
        if self.buffer is None:
            if self.layout is not None:
                self.buffer, self.shard = staging_buffer(self.layout)
            else:
                self.buffer = np.empty((self.unit, *values.shape[1:]), values.dtype)
        self.buffer[self.rows:self.rows + len(values)] = values
        self.rows += len(values)

    def whole_shard(self) -> npt.NDArray[np.uint8] | None:
        """The staged shard's bytes as stored when the stage holds one whole plain shard, aligned; else None."""
        aligned = self.rows == self.unit and self.written % self.unit == 0
        return self.shard if aligned else None

    def take(self) -> npt.NDArray[Any]:
        """The staged rows (a view of the buffer, valid until the next put); empties the stage."""
        assert self.buffer is not None
        rows, self.rows = self.rows, 0
        return self.buffer[:rows]


def storage_units(arrays: Mapping[str, zarr.Array[Any]]) -> dict[str, int]:
    """Rows of each array's storage unit along the sample axis: its codec shard, else its chunk."""
    return {name: int((arr.shards or arr.chunks)[0]) for name, arr in arrays.items()}


_LIVE_APPENDERS: weakref.WeakValueDictionary[tuple[str, str], BackgroundAppender] = weakref.WeakValueDictionary()
"""The background appender of each run (or region of one) written by this process (a reopened writer waits for
the old one)."""


def register_live_appender(store_url: str, key: str, appender: BackgroundAppender) -> None:
    """Remember ``appender`` as the live writer of ``key`` (a run id, or a region's key) in ``store_url``."""
    _LIVE_APPENDERS[(store_url, key)] = appender


def settle_live_appender(store_url: str, key: str) -> None:
    """Let an earlier writer of the same run (or region) in this process write out what it was handed, so a
    reopened writer (a retried task) trims and continues from a committed count that nobody changes behind its
    back."""
    appender = _LIVE_APPENDERS.pop((store_url, key), None)
    if appender is None:
        return
    try:
        appender.flush()
    except OODError as exc:
        log.warning("run %s: the earlier writer's background append failed (%s); resuming from its last commit",
                    key, exc)
    appender.abandon()
