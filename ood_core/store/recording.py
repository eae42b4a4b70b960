"""A zarr store that records the CRC-32C and length of every object written through it.

Writers open the store through :class:`RecordingStore`, so the checksums of a run's stored objects are taken
from the very bytes handed to the store as they are written; completing a run combines them
(:mod:`.crc32c`) instead of reading back everything it wrote. The record of a local store is kept per folder
for the whole process, so what one writer wrote is known to the next writer of the same run in this process
(the pipeline opens a writer per stage); :meth:`RecordingStore.release` drops a finished run's entries. What the
record does not know is read back: an object written by another process, or one whose stored size differs from
the size written (written elsewhere since). Verification (:func:`.integrity.verify_run`) always reads.

An entry is dropped when its object is deleted or written over in a way whose result cannot be known here:
two writes of the same key at once, a write that fails, ``set_if_not_exists``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from zarr.abc.store import Store
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore, WrapperStore

from ood_core.store.crc32c import value


class _Records:
    """What this process wrote to one stored location. Used on zarr's event loop thread only (the store's
    coroutines), except :meth:`RecordingStore.release`, which takes no entry another thread is writing."""

    def __init__(self) -> None:
        self.recorded: dict[str, tuple[int, int]] = {}
        self.in_flight: dict[str, int] = {}
        self.unsure: set[str] = set()  # keys written twice at once, or deleted while written

    def forget(self, key: str) -> None:
        self.recorded.pop(key, None)
        if key in self.in_flight:
            self.unsure.add(key)

    def forget_folder(self, prefix: str) -> None:
        folder = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""  # a folder: "a/b" holds "a/b/c", not "a/bc"
        for key in [k for k in {*self.recorded, *self.in_flight} if k.startswith(folder)]:
            self.forget(key)


_BY_FOLDER: dict[Path, _Records] = {}
"""The records of local stores, by folder. Other stores (fsspec URLs, memory) keep one record per store object:
their names do not tell reliably where the objects are (credentials, endpoints, reused ids)."""


def _records_for(store: Store) -> _Records:
    if isinstance(store, LocalStore):
        return _BY_FOLDER.setdefault(Path(store.root).resolve(), _Records())
    return _Records()


class RecordingStore(WrapperStore[Store]):
    """Forwards everything to ``store``; :meth:`recorded` gives (crc32c, length) of an object written through
    this store object or, for a local store, through any RecordingStore of this process on the same folder."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._records = _records_for(store)

    def recorded(self, key: str) -> tuple[int, int] | None:
        """(CRC-32C, length in bytes) of the object last written to ``key``; None when unknown."""
        return self._records.recorded.get(key)

    def release(self, prefix: str) -> None:
        """Drop the entries under the folder ``prefix`` (a run that completed or failed: nobody asks again)."""
        folder = prefix.rstrip("/") + "/"
        for key in [k for k in list(self._records.recorded) if k.startswith(folder)]:  # list(): one step under the GIL
            self._records.recorded.pop(key, None)

    async def set(self, key: str, value: Buffer) -> None:
        records = self._records
        records.forget(key)
        records.in_flight[key] = records.in_flight.get(key, 0) + 1
        stored = False
        try:
            checksum = _checksum(value)
            await self._store.set(key, value)
            stored = True
        finally:
            records.in_flight[key] -= 1
            last = not records.in_flight[key]
            sure = key not in records.unsure  # no other write or delete of the key overlapped this one
            if last:
                del records.in_flight[key]
                records.unsure.discard(key)
        if stored and sure:
            records.recorded[key] = checksum

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._records.forget(key)
        await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(key, value) for key, value in values))

    async def getsize(self, key: str) -> int:  # zarr's WrapperStore would read the whole object for its size
        return await self._store.getsize(key)

    async def getsize_prefix(self, prefix: str) -> int:
        return await self._store.getsize_prefix(prefix)

    async def delete(self, key: str) -> None:
        self._records.forget(key)
        await self._store.delete(key)

    async def delete_dir(self, prefix: str) -> None:
        self._records.forget_folder(prefix)
        await self._store.delete_dir(prefix)

    async def clear(self) -> None:
        self._records.forget_folder("")
        await self._store.clear()


def _checksum(buffer: Buffer) -> tuple[int, int]:
    data = buffer.as_numpy_array()
    return value(data), int(data.nbytes)
