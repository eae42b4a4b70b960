"""Whole shards of the sample arrays go to the store as the bytes zarr would store (ood_core.store.whole_shards),
written from the appender's staging buffer; anything zarr would store differently takes zarr's own path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import store_writer_proc as proc
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec
from zarr.storage import MemoryStore

from ood_core.store import RunWriter, open_run
from ood_core.store.appender import BackgroundAppender
from ood_core.store.opening import sample_array
from ood_core.store.whole_shards import shard_layout, staging_buffer, write_shard

IMAGE_ARRAYS = ("samples", "samples_physical", "sample_latents")


def new_run(store: str, chunk: int, shard: int, bands: bool = False, expected: int = 0) -> RunWriter:
    return RunWriter.create(
        store, n_inputs=proc.N_INPUTS, channels=proc.CHANNELS, height=proc.SIZE, width=proc.SIZE,
        criterion_names=proc.CRITERIA, provenance=proc.provenance(0), sample_chunk=chunk, shard_samples=shard,
        expected_samples=expected, physical_bands=bands,
    )


def stored(store: str, writer: RunWriter, name: str, key: str) -> bytes:
    return (Path(store) / "runs" / writer.run_id / name / key).read_bytes()


@pytest.mark.parametrize(("chunk", "shard", "bands"), [(4, 8, False), (8, 8, False), (1, 4, True), (2, 6, True)])
def test_a_whole_shard_is_stored_byte_for_byte_as_zarr_stores_it(
    tmp_path: Path, chunk: int, shard: int, bands: bool
) -> None:
    store = str(tmp_path / "store.zarr")
    ours, zarrs = (new_run(store, chunk, shard, bands, expected=3 * shard) for _ in range(2))
    rng = np.random.default_rng(7)
    for name in IMAGE_ARRAYS:
        fast, plain = sample_array(ours.group, name), sample_array(zarrs.group, name)
        layout = shard_layout(fast)
        assert layout is not None and layout.rows == shard
        rows = rng.standard_normal((shard, *fast.shape[1:])).astype(np.float32)
        rows[:chunk] = np.nan  # an inner chunk equal to the fill value is stored all the same
        staged, raw = staging_buffer(layout)
        staged[...] = rows
        write_shard(fast, 1, raw)
        plain[shard:2 * shard] = rows
        key = fast.metadata.encode_chunk_key((1, *[0] * (fast.ndim - 1)))
        assert stored(store, ours, name, key) == stored(store, zarrs, name, key), name
        np.testing.assert_array_equal(fast[shard:2 * shard], rows)
        assert np.isnan(fast[:shard]).all()  # the shards around it are untouched


def test_layouts_zarr_stores_differently_are_left_to_zarr(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    image = (3, 8, 8)
    common: dict[str, Any] = {"shape": (32, *image), "dtype": "float32", "fill_value": np.nan}
    made = {
        "zstd": group.create_array("zstd", chunks=(4, *image), shards=(8, *image), compressors=ZstdCodec(), **common),
        "split": group.create_array("split", chunks=(4, 1, 8, 8), shards=(8, *image), compressors=None, **common),
        "unsharded": group.create_array("unsharded", chunks=(8, *image), compressors=None, **common),
        "index_first": group.create_array(
            "index_first", chunks=(8, *image), compressors=None, **common,
            serializer=ShardingCodec(chunk_shape=(4, *image), codecs=[BytesCodec()], index_location="start"),
        ),
    }
    arrays = {name: arr.with_config({"write_empty_chunks": True}) for name, arr in made.items()}
    assert all(shard_layout(arr) is None for arr in arrays.values())
    plain = group.create_array("plain", chunks=(4, *image), shards=(8, *image), compressors=None, **common)
    assert shard_layout(plain) is None  # zarr would leave out chunks equal to the fill value
    arrays["plain"] = plain.with_config({"write_empty_chunks": True})
    assert shard_layout(arrays["plain"]) is not None
    # the appender writes all of them, whole shards and partial ones, and they read back as given
    commits: list[int] = []
    appender = BackgroundAppender(arrays, lambda stop, _: commits.append(stop), start=0,
                                  units={name: 8 for name in arrays}, capacity=32)
    values = np.random.default_rng(1).standard_normal((27, *image)).astype(np.float32)
    for start in range(0, 27, 5):
        appender.submit({name: values[start:start + 5] for name in arrays})
    appender.flush()
    assert commits[-1] == 27
    for name, arr in arrays.items():
        np.testing.assert_array_equal(arr[:27], values, err_msg=name)


def test_unaligned_batches_partial_shards_and_a_resume_read_back_as_appended(tmp_path: Path) -> None:
    store = str(tmp_path / "store.zarr")
    writer = new_run(store, chunk=2, shard=8)
    writer.write_inputs(**proc.make_inputs(3))
    batches = [proc.make_batch(3, i) for i in range(9)]  # 4 rows each: 36 rows, shards of 8
    for batch in batches[:5]:
        writer.append_samples(**batch)
    writer.flush()  # rows 16..19 of a partial shard go through zarr
    writer.close()
    resumed = RunWriter.open(store, writer.run_id)  # starts mid-shard: rows 20..23 complete it
    for batch in batches[5:]:
        resumed.append_samples(**batch)
    resumed.complete()
    ds = open_run(store, writer.run_id)  # checksums verified by reading every stored object
    for name in batches[0]:
        np.testing.assert_array_equal(ds[name].values, np.concatenate([b[name] for b in batches]), err_msg=name)
    files = sorted(p.name for p in (Path(store) / "runs" / writer.run_id / "samples" / "c").iterdir())
    assert files == ["0", "1", "2", "3", "4"]  # 36 rows: four whole shards and a partial one


def test_a_store_that_keeps_the_buffers_it_is_handed_gets_copies(tmp_path: Path) -> None:
    image = (3, 8, 8)
    arr = zarr.create_array(MemoryStore(), shape=(32, *image), chunks=(4, *image), shards=(8, *image), dtype="float32",
                            compressors=None, fill_value=np.nan, config={"write_empty_chunks": True})
    assert shard_layout(arr) is None  # MemoryStore keeps the buffer: the staging buffer is reused for the next shard
    appender = BackgroundAppender({"a": arr}, lambda stop, _: None, start=0, units={"a": 8}, capacity=32)
    values = np.random.default_rng(2).standard_normal((32, *image)).astype(np.float32)
    for start in range(0, 32, 4):
        appender.submit({"a": values[start:start + 4]})
    appender.flush()
    np.testing.assert_array_equal(arr[:], values)
