"""How a store's costs grow with the number of runs in it (issue 30).

Small synthetic runs (1 input of 1 x 8 x 8, 4 samples) are added through RunWriter (create, write_inputs,
append_samples, complete: the code real runs use for creation, consolidation and the catalogue) to one store until
it holds each size N; at each size: the time to add one more run, to list the runs (list_runs, the catalogue), to
open one run (open_run of the first run, checksums verified) and the bytes the added run wrote outside its own nodes
(``runs/<id>/`` and ``catalogue/<id>/``; counted at zarr's LocalStore), with the root zarr.json's size. Prints a
table and each column's ratio to the smallest size, all measured in this one process.
The same script measures the code before issue 30 (schema 1) with PYTHONPATH pointing at a checkout of it.
Usage: .venv/bin/python bench/bench_store_growth.py [--sizes 10,100,1000] [--huge (adds 10000)] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr.storage._local as zarr_local

from ood_core.store import RunWriter, list_runs, open_run

WRITTEN: list[tuple[str, int]] = []
_PUT = zarr_local._put


def _counting_put(path: Path, value: Any, exclusive: bool = False) -> int:
    n = _PUT(path, value, exclusive=exclusive)
    WRITTEN.append((str(path), int(n)))
    return n


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


def measure(store: str, seed: int, first: str) -> dict[str, float]:
    start = len(WRITTEN)
    t = time.perf_counter()
    run_id = add_run(store, seed)
    add = time.perf_counter() - t
    own = (f"{store}/runs/{run_id}/", f"{store}/catalogue/{run_id}/")
    outside = sum(n for key, n in WRITTEN[start:] if not key.startswith(own))
    t = time.perf_counter()
    list_runs(store)
    listing = time.perf_counter() - t
    open_run(store, first or run_id).load()  # untimed: the first call of a process imports and warms up dask
    t = time.perf_counter()
    open_run(store, first or run_id).load()
    opening = time.perf_counter() - t
    return {"add_s": add, "list_s": listing, "open_s": opening, "outside_bytes": outside,
            "root_bytes": (Path(store) / "zarr.json").stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--huge", action="store_true", help="add the size 10000 (about 20 minutes and 2 GB here)")
    parser.add_argument("--dir", help="where the store goes (default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")} | ({10_000} if args.huge else set()))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="ood-growth-"))
    store = str(folder / "store.zarr")
    zarr_local._put = _counting_put
    rows, count, first = [], 0, ""
    try:
        for size in sizes:
            while count < size - 1:
                run_id = add_run(store, count)
                first = first or run_id
                count += 1
            rows.append((size, measure(store, count, first or "")))
            first = first or list_runs(store)[0].run_id
            count += 1
    finally:
        zarr_local._put = _PUT
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    base = rows[0][1]
    print(f"{'runs':>6} {'add run s':>10} {'list s':>8} {'open s':>8} {'bytes outside run':>18} {'root zarr.json':>15}"
          f"   ratios to {rows[0][0]} runs: add, list, open")
    for size, m in rows:
        print(f"{size:>6} {m['add_s']:>10.3f} {m['list_s']:>8.3f} {m['open_s']:>8.3f} {m['outside_bytes']:>18.0f} "
              f"{m['root_bytes']:>15.0f}   {m['add_s'] / base['add_s']:.2f}, {m['list_s'] / base['list_s']:.2f}, "
              f"{m['open_s'] / base['open_s']:.2f}")


if __name__ == "__main__":
    main()
