"""The store's contract (DESIGN section 5): names, attribute keys, every array of a run group with its dimension
names and data type, and how the sample arrays are chunked and sharded (zarr v3 codec shards).

What a store holds is defined here and nowhere else: the writers create arrays from it, :mod:`.schema` checks
stores against it, the readers open what it names. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ood_core.store.errors import StoreError

SCHEMA_VERSION = 2
"""2: run catalogue (``catalogue/<run_id>``), consolidated metadata per run group, none at the root."""
READABLE_SCHEMA_VERSIONS = (1, 2)
"""Versions this library opens; a version-1 store is migrated to :data:`SCHEMA_VERSION` by its first write
(:mod:`.migration`, ``ood migrate``)."""
LIBRARY = "ood-synth"
RUNS_GROUP = "runs"
CATALOGUE_GROUP = "catalogue"
CATALOGUE_ATTR = "ood_catalogue_entry"
STATUSES = ("writing", "complete", "failed")
FINAL_STATUSES = ("complete", "failed")
STORE_ATTR = "ood_store"
RUN_ATTR = "ood_run"
PROGRESS_ATTR = "ood_progress"
_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_IMAGE_DIMS = ("channel", "y", "x")


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


def check_run_id(run_id: str) -> str:
    """``run_id`` when it is a valid group name of a run (StoreError otherwise)."""
    if not _RUN_ID_PATTERN.match(run_id):
        raise StoreError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only (max 128 chars)")
    return run_id


def fill_value(dtype: str) -> Any:
    """The fill value of an array of ``dtype``."""
    # NaN marks never-written float cells; integers and booleans have no such value.
    return np.nan if dtype.startswith("float") else 0 if dtype != "bool" else False


def as_dtype(name: str, values: npt.ArrayLike, dtype: str) -> npt.NDArray[Any]:
    """``values`` as a contiguous array of the contract's ``dtype``; StoreError for a lossy or senseless cast."""
    array = np.asarray(values)
    target = np.dtype(dtype)
    if target.kind in "iub" and array.dtype.kind not in "iub":
        raise StoreError(f"{name}: expected {dtype} values, got {array.dtype} (refusing a lossy cast)")
    if target.kind == "f" and array.dtype.kind not in "fiu":
        raise StoreError(f"{name}: expected {dtype} values, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=target)


# --------------------------------------------------------------------------------------------- chunking


def default_sample_chunk(bytes_per_sample: int, target_bytes: int = 4 << 20, most: int = 64) -> int:
    """Images per chunk: as many as fit in ``target_bytes``, at least 1, at most ``most``."""
    return max(1, min(most, target_bytes // max(1, bytes_per_sample)))


def default_shard_samples(sample_chunk: int, bytes_per_sample: int, target_bytes: int = 16 << 20,
                          most: int = 256) -> int:
    """Images per shard: a multiple of ``sample_chunk`` near ``target_bytes`` per shard, at most ``most``."""
    chunks = max(1, min(most // sample_chunk, target_bytes // max(1, bytes_per_sample * sample_chunk)))
    return sample_chunk * chunks


@dataclass(frozen=True)
class SampleLayout:
    """Chunking of the per-sample arrays: ``chunk`` images per chunk, ``shard`` per shard, ``vector_chunk``
    entries per chunk of the 1-D/2-D ones, ``expected`` samples of room made up front."""

    chunk: int
    shard: int
    vector_chunk: int
    expected: int


def sample_chunking(rest: tuple[int, ...], layout: SampleLayout) -> dict[str, Any]:
    """Chunking of one sample array: images sharded (``layout.shard`` samples per shard, ``layout.chunk`` per
    inner chunk), per-sample vectors in plain chunks of ``layout.vector_chunk`` entries."""
    if len(rest) < 2:
        return {"chunks": (layout.vector_chunk, *rest)}
    shard = max(layout.chunk, layout.shard - layout.shard % layout.chunk)
    # Uncompressed: generated float images shrink by under 10 % with zstd (46.3 of 50.3 MB on the data of
    # bench/bench_store.py) for a slower write. Every written chunk holds data, so skip the fill-value scan.
    return {"chunks": (layout.chunk, *rest), "shards": (shard, *rest), "compressors": None,
            "config": {"write_empty_chunks": True}}
