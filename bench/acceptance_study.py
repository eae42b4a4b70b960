"""Does the geometric screening's acceptance rate say anything about fidelity? (issue 11, item 2)

Reads the calibration tables that ``bench/calibration_table.py`` stored in its calibrated runs
(``<out>/<source>_calibrated.zarr``): for every setting of the grid, the acceptance rate of the run's own screening
and the held-out-shot fidelity scores. Per source, and pooled over sources after ranking within each source, prints
the Spearman rank correlation of acceptance with each score (positive: settings that accept more are worse), and
how the best-by-fidelity setting's acceptance compares with the others.

Usage: PYTHONPATH=. .venv/bin/python bench/acceptance_study.py [--out out/calibration_table]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ood_core.store import list_runs, open_run

SCORES = ("pixel_w1_rel", "spectrum_dex", "source_count_rel")


def table_of(store: Path) -> list[dict[str, Any]]:
    run = [r for r in list_runs(str(store)) if r.status == "complete"][-1]
    record = open_run(str(store), run.run_id, chunks=None).attrs["ood_run"]
    return [row for row in (record.get("calibration") or {}).get("table") or []
            if all(isinstance(row["scores"].get(k), float) for k in (*SCORES, "acceptance"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/calibration_table"))
    args = parser.parse_args()
    pooled: dict[str, list[float]] = {k: [] for k in ("acceptance", *SCORES)}
    print(f"{'source':<10} {'n':>3} " + " ".join(f"{'rho(' + k + ')':>24}" for k in SCORES) + "  acceptance range")
    for store in sorted(args.out.glob("*_calibrated.zarr")):
        rows = table_of(store)
        if len(rows) < 4:
            continue
        acc = np.array([r["scores"]["acceptance"] for r in rows])
        rhos = []
        for key in SCORES:
            values = np.array([r["scores"][key] for r in rows])
            rhos.append(spearmanr(acc, values).statistic if np.ptp(acc) > 0 else float("nan"))
            pooled[key] += list(np.argsort(np.argsort(values)) / (len(values) - 1))
        pooled["acceptance"] += list(np.argsort(np.argsort(acc)) / (len(acc) - 1))
        print(f"{store.name.split('_')[0]:<10} {len(rows):>3} " + " ".join(f"{r:>24.2f}" for r in rhos)
              + f"  {acc.min():.2f}-{acc.max():.2f}")
    acc_ranks = np.array(pooled["acceptance"])
    print("pooled (ranks within source): " + ", ".join(
        f"rho(acceptance, {k}) = {spearmanr(acc_ranks, np.array(pooled[k])).statistic:.2f}" for k in SCORES)
        + f"  over {len(acc_ranks)} settings")


if __name__ == "__main__":
    main()
