"""A zarr store that records the CRC-32C and length of every object written through it.

Writers open the store through :class:`RecordingStore`, so the checksums of a run's stored objects are taken
from the very bytes handed to the store as they are written; completing a run combines them
(:mod:`.crc32c`) instead of reading back everything it wrote. What the record may not know is read back:
an object written by another process or an earlier writer, or one whose stored size differs from the size
written (someone else wrote it since). Verification (:func:`.integrity.verify_run`) always reads.

A record is dropped when its object is deleted or written over in a way whose result cannot be known here:
two writes of the same key at once, a write that fails, ``set_if_not_exists``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from zarr.abc.store import Store
from zarr.core.buffer import Buffer
from zarr.storage import WrapperStore

from ood_core.store.crc32c import value


class RecordingStore(WrapperStore[Store]):
    """Forwards everything to ``store``; :meth:`recorded` gives (crc32c, length) of an object written here."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._recorded: dict[str, tuple[int, int]] = {}
        self._in_flight: dict[str, int] = {}
        self._unsure: set[str] = set()  # keys written twice at once, or deleted while written

    def recorded(self, key: str) -> tuple[int, int] | None:
        """(CRC-32C, length in bytes) of the object last written to ``key`` here; None when unknown."""
        return self._recorded.get(key)

    def _forget(self, key: str) -> None:
        self._recorded.pop(key, None)
        if key in self._in_flight:
            self._unsure.add(key)

    async def set(self, key: str, value: Buffer) -> None:
        self._forget(key)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        stored = False
        try:
            checksum = _checksum(value)
            await self._store.set(key, value)
            stored = True
        finally:
            self._in_flight[key] -= 1
            last = not self._in_flight[key]
            sure = key not in self._unsure  # no other write or delete of the key overlapped this one
            if last:
                del self._in_flight[key]
                self._unsure.discard(key)
        if stored and sure:
            self._recorded[key] = checksum

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._forget(key)
        await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(key, value) for key, value in values))

    async def getsize(self, key: str) -> int:  # zarr's WrapperStore would read the whole object for its size
        return await self._store.getsize(key)

    async def getsize_prefix(self, prefix: str) -> int:
        return await self._store.getsize_prefix(prefix)

    async def delete(self, key: str) -> None:
        self._forget(key)
        await self._store.delete(key)

    async def delete_dir(self, prefix: str) -> None:
        folder = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""  # a folder: "a/b" holds "a/b/c", not "a/bc"
        for key in [k for k in {*self._recorded, *self._in_flight} if k.startswith(folder)]:
            self._forget(key)
        await self._store.delete_dir(prefix)

    async def clear(self) -> None:
        for key in [*self._recorded, *self._in_flight]:
            self._forget(key)
        await self._store.clear()


def _checksum(buffer: Buffer) -> tuple[int, int]:
    data = buffer.as_numpy_array()
    return value(data), int(data.nbytes)
