"""Whole shards of a sample array written as the bytes zarr would store, from one buffer, with no re-encoding.

A sample array is sharded along the sample axis without compression (``contract.sample_chunking``): a shard of
``k`` inner chunks, each holding whole images, is stored as the images' raw little-endian bytes in order
followed by the shard index (offset and length of every chunk, uint64, then the index's CRC-32C): the zarr v3
sharding format. zarr's own write of such a shard copies the rows into each inner chunk, joins the chunks
into a new buffer and then writes it, about 2.5x the time numpy.save takes for the same bytes
(bench/bench_store.py). The appender stages a shard's rows in a buffer that ends with room for the index
(:func:`staging_buffer`), fills the index in once, and hands the whole buffer to the store (:func:`write_shard`).

:func:`shard_layout` says whether an array qualifies; anything else (compression, a transposed or big-endian
layout, several shards across an image, empty chunks left out, a store that keeps the buffer it is handed)
takes zarr's own path. The bytes are the ones
zarr writes for the same rows (tests/test_whole_shards.py compares them), so readers see no difference.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from zarr.abc.store import Store
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.bytes import Endian
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from ood_core.store.crc32c import value

_INDEX_CODECS = (BytesCodec(endian=Endian.little), Crc32cCodec())


@dataclass(frozen=True)
class ShardLayout:
    """How one whole shard of an array is stored: ``rows`` images of ``row_shape`` in ``dtype`` (little-endian),
    ``data_bytes`` of chunk data, then ``index`` (the same for every whole shard of the array)."""

    rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    data_bytes: int
    index: bytes


def _plain_sharding(arr: zarr.Array[Any]) -> ShardingCodec | None:
    """The array's sharding codec when its chunks are stored as raw little-endian bytes, index at the end."""
    metadata = arr.metadata
    codecs: tuple[Any, ...] = tuple(getattr(metadata, "codecs", ()))
    if metadata.zarr_format != 3 or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding: ShardingCodec = codecs[0]
    inner = sharding.codecs
    plain = len(inner) == 1 and isinstance(inner[0], BytesCodec) and inner[0].endian in (Endian.little, None)
    if not plain or tuple(sharding.index_codecs) != _INDEX_CODECS:
        return None
    return sharding if sharding.index_location == ShardingCodecIndexLocation.end else None


def _writes_out_at_once(store: Store) -> bool:
    """True for stores that are done with a buffer when its write returns (a file, or fsspec's bytes copy): the
    staging buffer is filled again for the next shard. zarr's MemoryStore, for one, keeps the buffer itself."""
    while isinstance(store, WrapperStore):
        store = store._store  # zarr documents ._store as the way to the wrapped store
    return isinstance(store, LocalStore | FsspecStore)


def shard_layout(arr: zarr.Array[Any]) -> ShardLayout | None:
    """The layout of the array's whole shards when :func:`write_shard` can write them, else None."""
    if not _writes_out_at_once(arr.store):
        return None
    sharding = _plain_sharding(arr)
    dtype = np.dtype(arr.dtype) if isinstance(arr.dtype, np.dtype) else None
    if sharding is None or dtype is None or dtype.hasobject or sys.byteorder != "little" or dtype.byteorder == ">":
        return None
    if arr.config.order != "C" or not arr.config.write_empty_chunks:
        return None  # zarr would leave chunks equal to the fill value out: not the bytes written here
    shard, chunk, shape = tuple(arr.shards or ()), tuple(sharding.chunk_shape), tuple(arr.shape)
    if not shard or shard[1:] != chunk[1:] or shard[1:] != shape[1:] or shard[0] % chunk[0]:
        return None  # inner chunks must be whole images stacked along the first axis, one shard across
    count = shard[0] // chunk[0]
    chunk_bytes = dtype.itemsize * int(np.prod(chunk))
    entries = np.empty((count, *([1] * (len(chunk) - 1)), 2), dtype="<u8")
    entries[..., 0] = (np.arange(count, dtype="<u8") * chunk_bytes).reshape(entries.shape[:-1])
    entries[..., 1] = chunk_bytes
    index = entries.tobytes()
    return ShardLayout(int(shard[0]), tuple(int(n) for n in shard[1:]), dtype, count * chunk_bytes,
                       index + value(index).to_bytes(4, "little"))


def staging_buffer(layout: ShardLayout) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]:
    """(rows of one shard to fill, in the array's dtype: values assigned are cast as zarr casts them; the whole
    shard's bytes they are part of, index already in place)."""
    raw = np.empty(layout.data_bytes + len(layout.index), dtype=np.uint8)
    raw[layout.data_bytes:] = np.frombuffer(layout.index, dtype=np.uint8)
    rows = raw[:layout.data_bytes].view(layout.dtype).reshape(layout.rows, *layout.row_shape)
    return rows, raw


def write_shard(arr: zarr.Array[Any], number: int, raw: npt.NDArray[np.uint8]) -> None:
    """Store ``raw`` (from :func:`staging_buffer`, rows filled) as shard ``number`` along the first axis."""
    key = arr.metadata.encode_chunk_key((number, *([0] * (arr.ndim - 1))))
    sync((arr.store_path / key).set(default_buffer_prototype().buffer.from_array_like(raw)))
