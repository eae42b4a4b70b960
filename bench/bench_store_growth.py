"""How a store's costs grow with the number of runs in it (issue 30).

Small synthetic runs (1 input of 1 x 8 x 8, 4 samples) are added through RunWriter (create, write_inputs,
append_samples, complete: the code real runs use for creation, consolidation and the catalogue) to one store until
it holds each size N; at each size: the time to add a run (median of the last 11 adds), to list one page of runs
(list_run_page, the newest 10; median of 5), to list all runs (list_runs, the catalogue;
median of 3, one try from 5,000 runs), to open one run (open_run of the first run, checksums verified, after an
untimed warm-up; median of 3) and the bytes the added run wrote outside its own nodes (``runs/<id>/``,
``catalogue/<id>/``, ``leases/<id>/``): the sizes of the files created or changed elsewhere in the store, found by
comparing every file's size and mtime before and after (whatever wrote them: zarr, the lease's ``os.link``), with
the root zarr.json's size. Prints each size's row as soon as
it is measured (unbuffered) with each column's ratio to the smallest size, all measured in this one process.
Usage: .venv/bin/python bench/bench_store_growth.py [--sizes 10,100,1000,10000] [--huge (adds 10000)] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ood_core.store import RunWriter, list_run_page, list_runs, open_run

PAGE = 10
"""Runs in a page: every size holds a whole page, so each page reads the same entries (``ood runs`` shows 50)."""


def _files(store: str) -> dict[str, tuple[int, int]]:
    """(mtime in ns, size) of every file in the store, by path relative to it."""
    found = {}
    for folder, _, names in os.walk(store):
        for name in names:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            found[os.path.relpath(path, store)] = (stat.st_mtime_ns, stat.st_size)
    return found


def add_run(store: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    writer = RunWriter.create(store, n_inputs=1, channels=1, height=8, width=8, criterion_names=["a"], units="1",
                              provenance={"parameters": {"seed": seed, "samples": 4}, "input_set_key": str(seed)})
    image = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    writer.write_inputs(image, np.zeros((1, 8, 8), bool), image, image, np.ones(1, np.float32))
    many = image.repeat(4, 0)
    writer.append_samples(many, many[:, 0], many, np.arange(4), np.zeros(4, np.int32), np.zeros((4, 1), np.float32),
                          np.ones(4, np.float32))
    writer.complete()
    return writer.run_id


def _median_time(call: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure(store: str, seed: int, first: str, recent_adds: list[float]) -> dict[str, float]:
    before = _files(store)
    t = time.perf_counter()
    run_id = add_run(store, seed)
    recent_adds.append(time.perf_counter() - t)
    own = tuple(f"{group}/{run_id}/" for group in ("runs", "catalogue", "leases"))
    outside = sum(size for key, (mtime, size) in _files(store).items()
                  if not key.startswith(own) and before.get(key) != (mtime, size))
    page = _median_time(lambda: list_run_page(store, limit=PAGE), 5)
    assert len(list_run_page(store, limit=PAGE).runs) == min(PAGE, seed + 1)
    listing = _median_time(lambda: list_runs(store), 3 if seed < 5000 else 1)
    open_run(store, first or run_id).load()  # untimed: the first call of a process imports and warms up dask
    opening = _median_time(lambda: open_run(store, first or run_id).load(), 3)
    return {"add_s": float(np.median(recent_adds[-11:])), "page_s": page, "list_s": listing, "open_s": opening,
            "outside_bytes": outside, "root_bytes": (Path(store) / "zarr.json").stat().st_size}


COLUMNS = (("add_s", "add run s", 10, 3), ("page_s", "page s", 8, 4), ("list_s", "list all s", 10, 3),
           ("open_s", "open s", 8, 3), ("outside_bytes", "bytes outside run", 18, 0),
           ("root_bytes", "root zarr.json", 15, 0))


def _row(size: int, m: dict[str, float], base: dict[str, float]) -> str:
    cells = " ".join(f"{m[key]:>{width}.{digits}f}" for key, _, width, digits in COLUMNS)
    ratios = ", ".join(f"{m[key] / base[key]:.2f}" for key in ("add_s", "page_s", "list_s", "open_s"))
    return f"{size:>6} {cells}   {ratios}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="comma-separated store sizes, e.g. 10,100,1000,10000")
    parser.add_argument("--huge", action="store_true",
                        help="add the size 10000 (about 40 minutes and 4.2 GB on 2 busy cores)")
    parser.add_argument("--dir", help="where the store goes (default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")} | ({10_000} if args.huge else set()))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="ood-growth-"))
    store = str(folder / "store.zarr")
    count, first, base, adds = 0, "", None, []
    header = " ".join(f"{title:>{width}}" for _, title, width, _ in COLUMNS)
    print(f"{'runs':>6} {header}   ratios to {sizes[0]} runs: add, page, list all, open", flush=True)
    try:
        for size in sizes:
            while count < size - 1:
                t = time.perf_counter()
                run_id = add_run(store, count)
                adds.append(time.perf_counter() - t)
                first = first or run_id
                count += 1
            m = measure(store, count, first, adds)
            base = base or m
            print(_row(size, m, base), flush=True)  # each size as soon as it is measured: a long run keeps its rows
            first = first or list_runs(store)[0].run_id
            count += 1
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
