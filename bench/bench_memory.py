"""Peak resident memory of a whole run against its number of samples (issue 12: memory flat in the sample count).

Each sample count runs in its own child process (``run_in_process`` on the project's demo skies, few DDIM steps,
a candidate budget of twice the samples), so every figure is that run's own peak (VmHWM); the parent prints
them side by side with the data the run wrote. A flat peak means the samples stream through the sampler, the
network and the store's background writer without ever being held together.
Usage: .venv/bin/python bench/bench_memory.py [--samples 1000 10000] [--steps 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(samples: int, steps: int, device: str, workdir: Path) -> dict[str, object]:
    """One run in this process; returns its figures."""
    sys.path.insert(0, str(ROOT))
    from ood_core.base_model.demo_skies import write_demo_skies
    from ood_core.pipeline import PipelineParameters, run_in_process

    skies = write_demo_skies(workdir / "skies", n=12, seed=0)
    before = peak_rss_mib()
    params = PipelineParameters(inputs=[str(p) for p in skies], store=str(workdir / "store.zarr"), samples=samples,
                                steps=steps, t0=600, prior="ppca", candidate_budget=2 * samples + 4096,
                                reference_count=16, device=device, seed=0)
    start = time.perf_counter()
    result = run_in_process(params)
    store_mb = sum(f.stat().st_size for f in (workdir / "store.zarr").rglob("*") if f.is_file()) / 1e6
    wall = round(time.perf_counter() - start, 1)
    return {"samples": samples, "written": result.n_samples, "steps": steps, "wall_s": wall,
            "timings_s": result.timings, "peak_rss_mib_before_run": round(before, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1), "store_mb": round(store_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
            print(json.dumps(child(args.samples[0], args.steps, args.device, Path(tmp))), flush=True)
        return
    rows = []
    for samples in args.samples:
        out = subprocess.run([sys.executable, __file__, "--child", "--samples", str(samples), "--steps",
                              str(args.steps), "--device", args.device], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("samples  written  store MB  peak RSS MiB  (before the run)  wall s")
    for row in rows:
        print(f"{row['samples']:>7}  {row['written']:>7}  {row['store_mb']:>8}  {row['peak_rss_mib']:>12}"
              f"  ({row['peak_rss_mib_before_run']:>6})  {row['wall_s']:>8}")
    if len(rows) > 1:
        growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]  # type: ignore[operator]
        print(f"peak RSS growth from {rows[0]['samples']} to {rows[-1]['samples']} samples: {growth:+.1f} MiB")


if __name__ == "__main__":
    main()
