"""Orchestration overhead: the same small run through the Prefect pipeline flow vs run_in_process (same run_stages).

Both sides load the shipped model from disk, read the same real FITS cutouts and write a complete run to a fresh
store on the same disk; the flow adds task and subflow runs, API calls to the Prefect server, store re-reads
between tasks and the report (artifacts, contact sheet). Runs alternate (direct, flow, direct, flow, ...) after
one warm-up of each, so both see the same machine load. The temporary Prefect server (or PREFECT_API_URL's)
is started before timing (with a private PREFECT_HOME); its start-up is printed separately.
Usage: .venv/bin/python bench/bench_orchestration.py [--repeats 3] [--inputs 5] [--samples 4] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ood_core.method.model import clear_model_cache
from ood_core.pipeline import run_in_process
from ood_core.pipeline.config import PipelineParameters

FITS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fits" / "cutouts_128"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings stable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_orch_"))
    inputs = work / "inputs"
    inputs.mkdir()
    for path in sorted(FITS_DIR.glob("glimpse_*.fits"))[: args.inputs]:
        shutil.copy(path, inputs / path.name)

    def params(store: Path) -> PipelineParameters:
        return PipelineParameters(inputs=[str(inputs)], store=str(store), samples=args.samples, steps=args.steps,
                                  t0=500, reference_count=4, batch_size=8, device="cpu", seed=2)

    if not os.environ.get("PREFECT_API_URL"):
        # A private PREFECT_HOME: the temporary server's SQLite database is not shared with other processes
        # (a shared ~/.prefect/prefect.db stalled runs for 60 s on "database is locked").
        os.environ["PREFECT_HOME"] = str(work / "prefect_home")
    started = time.perf_counter()
    from prefect import flow

    from flows.pipeline import pipeline_flow

    @flow
    def noop() -> int:
        return 1

    noop()  # starts the temporary server (or connects to PREFECT_API_URL)
    print(f"prefect import + server start-up: {time.perf_counter() - started:.2f} s (not in the ratio)")

    stages: dict[str, dict[str, float]] = {}

    def direct(i: int) -> float:
        t = time.perf_counter()
        clear_model_cache()  # both sides load the model from disk
        result = run_in_process(params(work / f"direct_{i}.zarr"))
        assert result.n_samples == args.samples
        stages["direct"] = result.timings
        return time.perf_counter() - t

    def orchestrated(i: int) -> float:
        clear_model_cache()
        t = time.perf_counter()
        result = pipeline_flow(params(work / f"flow_{i}.zarr"))
        assert result["n_samples"] == args.samples
        stages["flow"] = result["timings"]
        return time.perf_counter() - t

    direct(-1)
    orchestrated(-1)
    d_times, f_times = [], []
    for i in range(args.repeats):
        d_times.append(direct(i))
        f_times.append(orchestrated(i))
    d, f = statistics.median(d_times), statistics.median(f_times)
    print(f"run: {args.inputs} real GLIMPSE cutouts, {args.samples} samples, K={args.steps}, t0=500, CPU, "
          f"torch threads={args.threads}, repeats={args.repeats}")
    print(f"run_in_process      : median {d:.2f} s  ({', '.join(f'{x:.2f}' for x in d_times)})")
    print(f"pipeline_flow       : median {f:.2f} s  ({', '.join(f'{x:.2f}' for x in f_times)})")
    print(f"overhead            : {f - d:+.2f} s per run, ratio flow/direct = {f / d:.2f}")
    for name in ("invert", "prior", "sample"):
        print(f"  stage {name:<7} (last run): direct {stages['direct'].get(name, float('nan')):.2f} s, "
              f"flow {stages['flow'].get(name, float('nan')):.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
