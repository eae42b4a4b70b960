"""Cost of the store's checksums: complete() (hashing every stored chunk) and open_run with and without
verification, against reading the samples once, on a run of N samples of 3x64x64 float32.

    PYTHONPATH=. python bench/bench_integrity.py [--samples 1024] [--store /tmp/bench_integrity.zarr]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time

import numpy as np

from ood_core.store import RunWriter, open_run


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--store", default="/tmp/bench_integrity.zarr")
    args = parser.parse_args()
    shutil.rmtree(args.store, ignore_errors=True)
    rng = np.random.default_rng(0)
    writer = RunWriter.create(args.store, n_inputs=16, channels=3, height=64, width=64,
                              criterion_names=["a", "b", "c"], provenance={}, units="u")
    image = (16, 3, 64, 64)
    writer.write_inputs(rng.normal(size=image), rng.random((16, 64, 64)) < 0.1, rng.normal(size=image),
                        rng.normal(size=image), rng.uniform(30, 40, 16))
    for start in range(0, args.samples, 64):
        n = min(64, args.samples - start)
        writer.append_samples(rng.normal(size=(n, 3, 64, 64)), rng.normal(size=(n, 64, 64)),
                              rng.normal(size=(n, 3, 64, 64)), np.arange(n), np.zeros(n, np.int32),
                              rng.normal(size=(n, 3)), rng.random(n))
    began = time.perf_counter()
    writer.complete()
    timings = {"complete (hash every chunk)": time.perf_counter() - began}
    open_run(args.store, writer.run_id, verify=False)  # warm the page cache and imports
    for verify in (False, True):
        began = time.perf_counter()
        open_run(args.store, writer.run_id, verify=verify)
        timings[f"open_run verify={verify}"] = time.perf_counter() - began
    began = time.perf_counter()
    open_run(args.store, writer.run_id, verify=False, chunks=None)["samples"].values.sum()
    timings["read samples once (numpy)"] = time.perf_counter() - began
    size = subprocess.run(["du", "-sm", args.store], capture_output=True, text=True).stdout.split()[0]
    print(f"run of {args.samples} samples, store {size} MB")
    for name, seconds in timings.items():
        print(f"  {name:<32} {seconds:7.3f} s")


if __name__ == "__main__":
    main()
