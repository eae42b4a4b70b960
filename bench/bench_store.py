"""Streaming samples into the zarr store vs numpy.save of the same batches on the same disk.

Writes N samples (default 1024 x 3 x 64 x 64 float32, plus samples_physical, latents and the per-sample
vectors) in batches through RunWriter (append_samples ... complete(), which waits for the background writer,
writes the consolidated metadata and flips the status), and the same arrays batch by batch with numpy.save, in
the same process, interleaved over several repetitions (the page cache's writeback makes single figures
swing 2x on a shared machine). Prints the medians, MB/s for each and the ratio against numpy.save, the time
the caller itself spent in append_samples, the read-back speed of ``open_run(...).samples.values`` (vs
numpy.load), and the resident memory while appending (it must stay flat as the sample count grows).
Neither side calls fsync: both figures include the page cache, as a pipeline run would see it; an untimed
os.sync() before each write lets both start with no dirty pages of the other in flight.
Both ratios are printed, each the median of at least 9 repetitions, with the machine's load (os.getloadavg) before
and after: the wall-clock one (what a run waits for) and the CPU-time one (time.process_time, all threads of the
process: steadier on a shared machine, and what the store costs the host). Target: both >= 0.5 (zarr at least half
numpy.save's throughput).
Usage: .venv/bin/python bench/bench_store.py [--samples 1024] [--batch 32] [--size 64] [--sample-chunk N]
       [--shard-samples N] [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

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


def _load(values: tuple[float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


def nbytes(batch: dict[str, Any]) -> int:
    return sum(int(v.nbytes) for v in batch.values())


def write_zarr(store: str, pool: list[dict[str, Any]], n_batches: int, args: argparse.Namespace
               ) -> tuple[float, float, float, list[float], float, float]:
    """One run streamed through RunWriter: (total seconds to complete, CPU seconds of the process (all
    threads), seconds the caller spent inside append_samples, RSS after each append, and of the totals the seconds
    and CPU seconds of the streaming alone: the appends and the flush that writes them, without complete())."""
    n_inputs = 8
    writer = RunWriter.create(
        store, n_inputs=n_inputs, channels=args.channels, height=args.size, width=args.size,
        criterion_names=CRITERIA, provenance={"bench": True}, sample_chunk=args.sample_chunk,
        shard_samples=args.shard_samples, expected_samples=n_batches * len(pool[0]["samples"]), units="adu",
    )
    image = (n_inputs, args.channels, args.size, args.size)
    zeros = np.zeros(image, np.float32)
    writer.write_inputs(zeros, np.zeros((n_inputs, args.size, args.size), bool), zeros, zeros,
                        np.zeros(n_inputs, np.float32))
    rss_trace = []
    in_append = 0.0
    start, cpu = time.perf_counter(), time.process_time()
    for index in range(n_batches):
        before = time.perf_counter()
        writer.append_samples(**pool[index % len(pool)], copy=False)  # as the pipeline does: fresh arrays
        in_append += time.perf_counter() - before
        rss_trace.append(rss_mib())
    writer.flush()
    stream, stream_cpu = time.perf_counter() - start, time.process_time() - cpu
    writer.complete()
    return time.perf_counter() - start, time.process_time() - cpu, in_append, rss_trace, stream, stream_cpu


def write_numpy(npy_dir: Path, pool: list[dict[str, Any]], n_batches: int) -> tuple[float, float]:
    """The same batches with numpy.save, one file per array and batch; (seconds, CPU seconds)."""
    npy_dir.mkdir()
    start, cpu = time.perf_counter(), time.process_time()
    for index in range(n_batches):
        for name, values in pool[index % len(pool)].items():
            np.save(npy_dir / f"{name}_{index:05d}.npy", values)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--sample-chunk", type=int, default=None, help="images per zarr chunk (default: the store's)")
    parser.add_argument("--shard-samples", type=int, default=None, help="images per shard (default: the store's)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved zarr/numpy repetitions (medians, >= 9)")
    parser.add_argument("--dir", default=None, help="where the temporary stores go (default: system temp)")
    args = parser.parse_args()
    if args.repeats < 9:
        parser.error("--repeats must be >= 9: the figures are medians of at least 9 repetitions")
    n_batches = args.samples // args.batch
    rng = np.random.default_rng(0)
    # a few distinct batches reused cyclically: generation cost and memory stay out of the measurement
    pool = [make_batch(rng, args.batch, args.channels, args.size, i * args.batch) for i in range(4)]
    total_mb = nbytes(pool[0]) * n_batches / 1e6
    work = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.dir))
    shape = (args.channels, args.size, args.size)
    print(f"samples={n_batches * args.batch} batch={args.batch} shape={shape} "
          f"sample_chunk={args.sample_chunk or 'default'} data={total_mb:.1f} MB per repetition, "
          f"{args.repeats} repetitions (zarr and numpy.save interleaved, order alternating) in {work}")
    load_before = os.getloadavg()
    try:
        zarr_times, zarr_cpu, caller_times, npy_times, npy_cpu = [], [], [], [], []
        stream_times, stream_cpu = [], []
        rss_start, peak_start = rss_mib(), peak_rss_mib()
        rss_trace: list[float] = []
        for rep in range(args.repeats):
            store = str(work / f"store{rep}.zarr")
            steps = [("zarr", store), ("numpy", work / f"npy{rep}")]
            for kind, where in steps if rep % 2 == 0 else steps[::-1]:
                os.sync()  # untimed: each side starts without the other's dirty pages still being written back
                if kind == "zarr":
                    total, cpu, in_append, rss_trace, streamed, streamed_cpu = write_zarr(str(where), pool,
                                                                                           n_batches, args)
                    stream_times.append(streamed)
                    stream_cpu.append(streamed_cpu)
                    zarr_times.append(total)
                    zarr_cpu.append(cpu)
                    caller_times.append(in_append)
                else:
                    wall, cpu = write_numpy(Path(where), pool, n_batches)
                    npy_times.append(wall)
                    npy_cpu.append(cpu)
            if rep < args.repeats - 1:  # both sides' files go: dirty pages left behind slow the next writes
                shutil.rmtree(work / f"npy{rep}")
                shutil.rmtree(store)
        peak_growth = peak_rss_mib() - peak_start
        zarr_s, npy_s = statistics.median(zarr_times), statistics.median(npy_times)
        caller_s = statistics.median(caller_times)
        last = args.repeats - 1
        store, npy_dir = str(work / f"store{last}.zarr"), work / f"npy{last}"

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
        run_id = open_run(store).attrs["ood_run"]["run_id"]
        plain = xr.open_zarr(store, group=f"runs/{run_id}", consolidated=True)
        assert plain.sizes["sample"] == read.shape[0]
        on_disk = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file()) / 1e6

        def runs(values: list[float]) -> str:
            return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"

        print(f"write zarr store : median {zarr_s:6.2f} s  {total_mb / zarr_s:7.1f} MB/s  {runs(zarr_times)} s "
              f"({on_disk:.1f} MB on disk)")
        print(f"  of which the caller spent in append_samples: median {caller_s:.2f} s "
              f"({100 * caller_s / zarr_s:.0f} %; the rest overlaps the caller's own work in a pipeline)")
        print(f"write numpy.save : median {npy_s:6.2f} s  {total_mb / npy_s:7.1f} MB/s  {runs(npy_times)} s")
        zarr_c, npy_c = statistics.median(zarr_cpu), statistics.median(npy_cpu)
        wall_ratio, cpu_ratio = npy_s / zarr_s, npy_c / zarr_c
        print(f"CPU seconds (all threads): zarr median {zarr_c:.2f} {runs(zarr_cpu)}, numpy.save median {npy_c:.2f} "
              f"{runs(npy_cpu)}")
        print(f"ratio zarr/numpy.save throughput, medians of {args.repeats}: wall clock {wall_ratio:.2f}, CPU time "
              f"{cpu_ratio:.2f} (target >= 0.5: {'met' if min(wall_ratio, cpu_ratio) >= 0.5 else 'NOT met'}); "
              f"load (1, 5, 15 min) before {_load(load_before)}, after {_load(os.getloadavg())} on "
              f"{os.cpu_count()} cores")
        paired = [n / z for n, z in zip(npy_times, zarr_times, strict=True)]
        paired_cpu = [n / z for n, z in zip(npy_cpu, zarr_cpu, strict=True)]
        print(f"  ratio within each repetition (both sides in the same page-cache state), median: wall clock "
              f"{statistics.median(paired):.2f} {runs(paired)}, CPU time {statistics.median(paired_cpu):.2f}")
        stream_s, stream_c = statistics.median(stream_times), statistics.median(stream_cpu)
        print(f"  of which streaming (appends + flush, without complete()): median {stream_s:.2f} s, CPU "
              f"{stream_c:.2f} s; ratio against numpy.save: wall clock {npy_s / stream_s:.2f}, CPU time "
              f"{npy_c / stream_c:.2f}; complete() (attributes, checksums, consolidated metadata): "
              f"{zarr_s - stream_s:.2f} s")
        print(f"read open_run(...).samples.values: {read_s:6.2f} s  {samples_mb / read_s:7.1f} MB/s "
              f"(first call in the process: {cold_s:.2f} s)")
        print(f"read open_run(..., chunks=None)  : {eager_s:6.2f} s  {samples_mb / eager_s:7.1f} MB/s")
        print(f"read numpy.load of the same      : {np_read_s:6.2f} s  {samples_mb / np_read_s:7.1f} MB/s")
        print("xarray.open_zarr(store, group='runs/<id>', consolidated=True): ok")
        quarter = max(1, n_batches // 4)
        print(f"RSS while appending (last repetition): start {rss_start:.1f} MiB, after {quarter} batches "
              f"{rss_trace[quarter - 1]:.1f} MiB, after {n_batches} batches {rss_trace[-1]:.1f} MiB; "
              f"peak RSS growth over all repetitions {peak_growth:.1f} MiB")
        late_growth = rss_trace[-1] - rss_trace[quarter - 1]
        print(f"RSS growth over the last 3/4 of the appends: {late_growth:+.1f} MiB "
              f"(the data written in that span: {total_mb * (n_batches - quarter) / n_batches:.1f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
