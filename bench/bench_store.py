"""Streaming samples into the zarr store vs numpy.save of the same batches on the same disk.

Writes N samples (default 512 x 3 x 64 x 64 float32, plus samples_physical, latents and the per-sample
vectors) in batches through RunWriter, and the same arrays batch by batch with numpy.save. Prints MB/s for
each and the ratio, the read-back speed of ``open_run(...).samples.values`` (vs numpy.load), and the
resident memory while appending (it must stay flat as the sample count grows).
Neither side calls fsync: both figures include the page cache, as a pipeline run would see it.
Usage: .venv/bin/python bench/bench_store.py [--samples 512] [--batch 32] [--size 64] [--sample-chunk 16]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ood_core.store import RunWriter, open_run

CRITERIA = ("mean_distance_to_reference", "mean_angle_to_ood_deg", "mean_pair_angle_at_candidate_deg")


def rss_mib() -> float:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batch(rng: np.random.Generator, batch: int, channels: int, size: int, offset: int) -> dict[str, Any]:
    """One batch of smooth-ish images (noise plus a gradient) so compression has something realistic to do."""
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    images = (rng.standard_normal((batch, channels, size, size), dtype=np.float32) * 0.1 + ramp).clip(-1, 1)
    return {
        "samples": images,
        "samples_physical": np.exp(3 * images.mean(axis=1)).astype(np.float32),
        "sample_latents": rng.standard_normal((batch, channels, size, size), dtype=np.float32),
        "sample_seed": np.arange(offset, offset + batch, dtype=np.int64),
        "sample_parent": rng.integers(-1, 8, batch).astype(np.int32),
        "sample_criteria": rng.uniform(0, 100, (batch, len(CRITERIA))).astype(np.float32),
        "sample_nearest_input_distance": rng.uniform(1, 5, batch).astype(np.float32),
    }


def nbytes(batch: dict[str, Any]) -> int:
    return sum(int(v.nbytes) for v in batch.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--sample-chunk", type=int, default=16, help="images per zarr chunk")
    parser.add_argument("--dir", default=None, help="where the temporary stores go (default: system temp)")
    args = parser.parse_args()
    n_batches = args.samples // args.batch
    rng = np.random.default_rng(0)
    # a few distinct batches reused cyclically: generation cost and memory stay out of the measurement
    pool = [make_batch(rng, args.batch, args.channels, args.size, i * args.batch) for i in range(4)]
    total_mb = nbytes(pool[0]) * n_batches / 1e6
    work = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.dir))
    shape = (args.channels, args.size, args.size)
    print(f"samples={n_batches * args.batch} batch={args.batch} shape={shape} "
          f"sample_chunk={args.sample_chunk} data={total_mb:.1f} MB in {work}")
    try:
        store = str(work / "store.zarr")
        n_inputs = 8
        writer = RunWriter.create(
            store, n_inputs=n_inputs, channels=args.channels, height=args.size, width=args.size,
            criterion_names=CRITERIA, provenance={"bench": True}, sample_chunk=args.sample_chunk, units="adu",
        )
        image = (n_inputs, args.channels, args.size, args.size)
        zeros = np.zeros(image, np.float32)
        writer.write_inputs(zeros, np.zeros((n_inputs, args.size, args.size), bool), zeros, zeros,
                            np.zeros(n_inputs, np.float32))
        rss_start, peak_start = rss_mib(), peak_rss_mib()
        rss_trace = []
        start = time.perf_counter()
        for index in range(n_batches):
            writer.append_samples(**pool[index % len(pool)])
            rss_trace.append(rss_mib())
        writer.complete()
        zarr_s = time.perf_counter() - start
        peak_growth = peak_rss_mib() - peak_start

        npy_dir = work / "npy"
        npy_dir.mkdir()
        start = time.perf_counter()
        for index in range(n_batches):
            for name, values in pool[index % len(pool)].items():
                np.save(npy_dir / f"{name}_{index:05d}.npy", values)
        npy_s = time.perf_counter() - start

        samples_mb = n_batches * pool[0]["samples"].nbytes / 1e6
        start = time.perf_counter()
        read = open_run(store)["samples"].values  # first call pays for importing dask and its thread pool
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        read = open_run(store)["samples"].values
        read_s = time.perf_counter() - start
        assert read.shape[0] == n_batches * args.batch
        np.testing.assert_array_equal(read[: args.batch], pool[0]["samples"])
        start = time.perf_counter()
        eager = open_run(store, chunks=None)["samples"].values
        eager_s = time.perf_counter() - start
        np.testing.assert_array_equal(eager, read)
        start = time.perf_counter()
        np_read = np.concatenate([np.load(npy_dir / f"samples_{i:05d}.npy") for i in range(n_batches)])
        np_read_s = time.perf_counter() - start
        assert np_read.shape == read.shape
        on_disk = sum(f.stat().st_size for f in (work / "store.zarr").rglob("*") if f.is_file()) / 1e6

        print(f"write zarr store : {zarr_s:6.2f} s  {total_mb / zarr_s:7.1f} MB/s  "
              f"({on_disk:.1f} MB on disk)")
        print(f"write numpy.save : {npy_s:6.2f} s  {total_mb / npy_s:7.1f} MB/s")
        print(f"write ratio zarr/numpy throughput: {npy_s / zarr_s:.2f}")
        print(f"read open_run(...).samples.values: {read_s:6.2f} s  {samples_mb / read_s:7.1f} MB/s "
              f"(first call in the process: {cold_s:.2f} s)")
        print(f"read open_run(..., chunks=None)  : {eager_s:6.2f} s  {samples_mb / eager_s:7.1f} MB/s")
        print(f"read numpy.load of the same      : {np_read_s:6.2f} s  {samples_mb / np_read_s:7.1f} MB/s")
        quarter = max(1, n_batches // 4)
        print(f"RSS while appending: start {rss_start:.1f} MiB, after {quarter} batches "
              f"{rss_trace[quarter - 1]:.1f} MiB, after {n_batches} batches {rss_trace[-1]:.1f} MiB; "
              f"peak RSS growth {peak_growth:.1f} MiB")
        late_growth = rss_trace[-1] - rss_trace[quarter - 1]
        print(f"RSS growth over the last 3/4 of the appends: {late_growth:+.1f} MiB "
              f"(the data written in that span: {total_mb * (n_batches - quarter) / n_batches:.1f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
