"""Issue 11 item 5: the same run with matching background noise on and off, evaluated against unseen cutouts.

For each source of ``$OOD_DEV_DATA/cutouts_128``
(the dev set, docs/DESIGN.md section 9) the first ``--shots`` files (name order) are the run's inputs
and the rest the reference. Two runs of the same size, seed and settings (``--t0``, prior ppca, strategy
slerp_ood_prior given): one leaves ``noise`` to the calibration (which scores every setting with and without noise
and chooses), the other gives the opposite value with ``--no-calibrate``. Each is evaluated (``evaluate_run``,
baseline augmentation). Prints and writes ``noise.json`` under ``--out``.

Usage: PYTHONPATH=. .venv/bin/python bench/noise_compare.py [--sources glimpse horsehead] [--samples 16]
       [--steps 25] [--t0 400] [--out out/noise_compare]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from ood_core.calibration import calibrate
from ood_core.evaluation import evaluate_run
from ood_core.pipeline import PipelineParameters, run_in_process
from ood_core.store import open_run

CUTOUTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fits" / "cutouts_128"
METRICS = ("pixel_w1_rel", "spectrum_dex", "source_count_rel", "source_count_mean", "near_copy_fraction")


def one_run(source: str, noise: str | None, shots: list[str], reference: list[str],
            args: argparse.Namespace) -> dict[str, Any]:
    """Run (noise None: calibrated) and evaluate; the metrics of the run and of augmentation, the settings."""
    label = "calibrated" if noise is None else f"noise-{noise}"
    store = str(args.out / f"{source}_{label}.zarr")
    shutil.rmtree(store, ignore_errors=True)
    fields: dict[str, Any] = {"inputs": shots, "store": store, "samples": args.samples, "steps": args.steps,
                              "seed": args.seed, "device": "cpu", "t0": args.t0, "prior": "ppca",
                              "strategy": "slerp_ood_prior"}
    if noise is not None:
        fields.update(noise=noise, calibrate=False)
    started = time.perf_counter()
    result = run_in_process(PipelineParameters(**fields), choose=calibrate)
    seconds = time.perf_counter() - started
    evaluation = evaluate_run(store, reference, out_dir=args.out / f"{source}_{label}_eval",
                              baselines=("augmentation",), device="cpu")
    provenance = open_run(store, result.run_id).attrs["ood_run"]
    calibration = provenance.get("calibration") or {}
    table = [{"noise": row["setting"]["noise"], **{m: row["scores"].get(m) for m in METRICS[:3]}}
             for row in calibration.get("table") or []]
    sets = evaluation["sets"]
    return {"label": label, "noise": provenance["settings"]["noise"],
            "noise_from": provenance["settings"]["from"]["noise"], "run_seconds": round(seconds, 1),
            "noise_level_run": (provenance.get("noise") or {}).get("level_run"), "calibration_table": table,
            "method": {m: sets["method"].get(m) for m in METRICS},
            "augmentation": {m: sets["augmentation"].get(m) for m in METRICS},
            "reference_sources": (sets.get("reference") or {}).get("source_count_mean"),
            "plots": evaluation["plots"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="*", default=["glimpse", "horsehead"])
    parser.add_argument("--shots", type=int, default=9)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--t0", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/noise_compare"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for source in args.sources:
        files = sorted(str(p) for p in CUTOUTS.glob(f"{source}_y*_x*.fits"))
        shots, reference = files[:args.shots], files[args.shots:]
        calibrated = one_run(source, None, shots, reference, args)
        other = one_run(source, "off" if calibrated["noise"] == "on" else "on", shots, reference, args)
        results[source] = {"shots": len(shots), "reference": len(reference), "runs": [calibrated, other]}
        (args.out / "noise.json").write_text(json.dumps(results, indent=1, default=str))
        for run in (calibrated, other):
            print(source, run["label"], "noise", run["noise"], f"({run['noise_from']})", "method", run["method"],
                  "augmentation", run["augmentation"], "reference sources", run["reference_sources"],
                  "calibration", run["calibration_table"], "sheet", run["plots"].get("contact_sheet"), flush=True)


if __name__ == "__main__":
    main()
