"""Issue 11's comparison table: the calibrated method against today's defaults and the baselines, per dev source.

For every source of ``$OOD_DEV_DATA/cutouts_128``
(the dev set, docs/DESIGN.md section 9) (files ``<source>_y..._x....fits``, in name order) the
first ``shots`` files are the run's inputs and the rest the unseen reference (shots = n - max(3, n // 3), at
most 10: 6-9 shots and 3-5 references; a source with fewer than 9 files gets fewer than 6 shots, so its run is
not calibrated and the table says so). Three runs of the same size and seed:

- ``calibrated``: ``ood run`` defaults (the shipped model for the band count, the run calibrates t0, strategy
  and prior on its shots);
- ``defaults``: the same with ``--no-calibrate`` (t0 600, slerp toward a prior draw at 0.3-0.7, scalar prior);
- ``defaults-base64``: today's defaults with the old three-channel ``models/base64`` (band replicated).

``ood evaluate`` of the calibrated run adds the baselines (N(0, I) of the frozen model, the unscreened prior,
augmentation of the shots by the eight flips/rotations, fine-tuning); the other two runs are evaluated alone.
Metrics (lower is better): pixel W1 / sd of the reference, power-spectrum distance (dex), relative error of the
mean source count, Minkowski functionals (mean of area, perimeter, Euler W1), near-copy fraction (up to D4).
Writes ``table.json`` and ``table.md`` under ``--out`` and prints the markdown.

Usage: PYTHONPATH=. .venv/bin/python bench/calibration_table.py [--sources glimpse bolocam ...] [--samples 16]
       [--steps 25] [--finetune-steps 100] [--anchors N] [--out out/calibration_table]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ood_core.calibration import calibrate
from ood_core.calibration.scores import FIDELITY, rank_sum
from ood_core.evaluation import evaluate_run
from ood_core.evaluation.c2st import c2st
from ood_core.evaluation.loading import load_run
from ood_core.pipeline import PipelineParameters, run_in_process
from ood_core.store import open_run

CUTOUTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fits" / "cutouts_128"
BASE64 = str(Path(__file__).resolve().parents[1] / "models" / "base64")
BASELINES = ("in_domain", "prior_unscreened", "augmentation", "finetune")
METRICS = ("pixel_w1_rel", "spectrum_dex", "source_count_rel", "minkowski", "c2st_accuracy")
LABELS = {"pixel_w1_rel": "W1/sd", "spectrum_dex": "P(k) dex", "source_count_rel": "src err",
          "minkowski": "Minkowski", "c2st_accuracy": "C2ST", "near_copy_fraction": "copies"}
RUNS = ("calibrated", "defaults", "defaults-base64")


def split(source: str) -> tuple[list[str], list[str]]:
    """(shots, reference) of one source, in name order."""
    files = sorted(str(p) for p in CUTOUTS.glob(f"{source}_y*_x*.fits"))
    shots = min(10, len(files) - max(3, len(files) // 3))
    return files[:shots], files[shots:]


def sources() -> list[str]:
    return sorted({p.name.split("_y")[0] for p in CUTOUTS.glob("*_y*_x*.fits")})


def row_of(entry: dict[str, Any]) -> dict[str, Any]:
    """The table's metrics of one evaluated set."""
    row = {name: entry.get(name) for name in ("pixel_w1_rel", "spectrum_dex", "source_count_rel",
                                              "source_count_mean", "near_copy_fraction", "n", "c2st_accuracy",
                                              "c2st_ci_low", "c2st_ci_high")}
    parts = [entry.get(f"minkowski_{k}") for k in ("area", "perimeter", "euler")]
    row["minkowski"] = sum(parts) / 3 if all(isinstance(v, float) for v in parts) else None
    return row


def one_run(source: str, label: str, shots: list[str], reference: list[str], args: argparse.Namespace
            ) -> dict[str, dict[str, Any]]:
    """Run and evaluate one configuration; {set name: row}, plus the run's facts under "_run"."""
    store = str(args.out / f"{source}_{label}.zarr")
    shutil.rmtree(store, ignore_errors=True)
    fields: dict[str, Any] = {"inputs": shots, "store": store, "samples": args.samples, "steps": args.steps,
                              "seed": args.seed, "device": "cpu"}
    if label != "calibrated":
        fields["calibrate"] = False
    if label == "defaults-base64":
        fields["model"] = BASE64
    started = time.perf_counter()
    result = run_in_process(PipelineParameters(**fields), choose=calibrate)
    run_seconds = time.perf_counter() - started
    provenance = open_run(store, result.run_id, chunks=None).attrs["ood_run"]
    if result.n_samples == 0:  # nothing passed the screening: a finding, not a crash
        empty: dict[str, Any] = dict.fromkeys((*METRICS, "source_count_mean", "near_copy_fraction"))
        return {label: {**empty, "n": 0}, "_run": {
            "label": label, "acceptance": result.acceptance_rate, "run_seconds": round(run_seconds, 1),
            "evaluate_seconds": 0.0, "settings": provenance.get("settings"), "contact_sheet": None,
            "note": "no sample passed the screening within the candidate budget"}}
    evaluation = evaluate_run(store, reference, out_dir=args.out / f"{source}_{label}_eval",
                              baselines=BASELINES if label == "calibrated" else (),
                              finetune_steps=args.finetune_steps, in_domain_anchor_count=args.anchors,
                              device="cpu")
    rows = {("method" if name == "method" else name): row_of(entry) for name, entry in evaluation["sets"].items()}
    rows = {(label if name == "method" else name): row for name, row in rows.items() if name != "inputs"}
    rows["_run"] = {"label": label, "acceptance": result.acceptance_rate, "run_seconds": round(run_seconds, 1),
                    "evaluate_seconds": evaluation["timings"]["total"],
                    "settings": provenance.get("settings"),
                    "contact_sheet": evaluation["plots"].get("contact_sheet"),
                    "calibration": calibration_facts(provenance.get("calibration") or {}),
                    "realism": run_realism(store)}
    return rows


def run_realism(store: str) -> dict[str, Any]:
    """The C2ST of the run's own samples against its shots (what the calibration's verdict tests with the chosen
    setting's calibration samples)."""
    run = load_run(store)
    shots = run.physical_of(run.inputs, np.arange(run.inputs.shape[0]))
    return {k: v for k, v in c2st(shots, run.samples_physical, seed=0).to_dict().items() if k != "features"}


def calibration_facts(calibration: dict[str, Any]) -> dict[str, Any] | None:
    """The calibration's choice by its ranking (with the C2ST) beside the choice the older ranking (pixel W1,
    P(k), source counts only) would have made from the same table, and the verdict."""
    if not calibration.get("enabled"):
        return None
    table = calibration["table"]
    old_ranks = rank_sum(table, tuple(name for name in FIDELITY if name != "c2st_accuracy"))
    clean = [i for i, row in enumerate(table) if not row.get("disqualified")] or list(range(len(table)))
    old_best = min(clean, key=lambda i: (old_ranks[i], i))
    verdict = calibration.get("verdict") or {}
    return {"chosen": table[calibration["best"]]["setting"], "chosen_by_older_ranking": table[old_best]["setting"],
            "choice_changed": calibration["best"] != old_best,
            "chosen_c2st": table[calibration["best"]]["scores"].get("c2st_accuracy"),
            "older_choice_c2st": table[old_best]["scores"].get("c2st_accuracy"),
            "distinguishable": verdict.get("distinguishable"), "verdict": verdict.get("line")}


def verdicts(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How the calibrated method compares with augmentation and with the defaults, metric by metric."""
    def wins(a: str, b: str) -> list[str]:
        if a not in rows or b not in rows:
            return []
        return [m for m in METRICS if rows[a].get(m) is not None and rows[b].get(m) is not None
                and rows[a][m] < rows[b][m]]
    return {"beats_augmentation": wins("calibrated", "augmentation"),
            "beats_defaults": wins("calibrated", "defaults"),
            "mono64_beats_base64_defaults": wins("defaults", "defaults-base64"),
            "near_copies": (rows.get("calibrated") or {}).get("near_copy_fraction")}


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(table: dict[str, Any]) -> str:
    """One block per source: the sets' metrics, the runs' facts, the verdicts."""
    order = ("calibrated", "defaults", "defaults-base64", *BASELINES)
    lines = []
    for source, entry in table.items():
        rows, runs = entry["rows"], entry["runs"]
        lines += [f"### {source}: {entry['shots']} shots, {entry['reference']} reference cutouts", "",
                  "| set | " + " | ".join(LABELS[m] for m in (*METRICS, "near_copy_fraction")) + " | src/img |",
                  "|---" * (len(METRICS) + 3) + "|"]
        for name in order:
            if name in rows:
                row = rows[name]
                lines.append(f"| {name} | " + " | ".join(fmt(row.get(m)) for m in (*METRICS, "near_copy_fraction"))
                             + f" | {fmt(row.get('source_count_mean'))} |")
        ref = entry.get("reference_sources")
        if ref is not None:
            lines.append(f"| (reference) | | | | | | {fmt(ref)} |")
        lines.append("")
        for run in runs:
            chosen = run.get("settings") or {}
            if run.get("note"):
                lines.append(f"- {run['label']}: {run['note']} (acceptance {run['acceptance']:.3f})")
            lines.append(f"- {run['label']}: acceptance {run['acceptance']:.3f}, t0 {chosen.get('t0')}, "
                         f"strategy {chosen.get('strategy')} {chosen.get('slerp_range')}, prior {chosen.get('prior')}"
                         f" ({chosen.get('from')}), run {run['run_seconds']} s, evaluate {run['evaluate_seconds']} s")
            realism = run.get("realism")
            if realism:
                lines.append(f"- {run['label']}: its {realism['n_candidate']} samples against its {realism['n_real']} "
                             f"shots: C2ST {realism['accuracy']:.2f} [{realism['ci_low']:.2f}, "
                             f"{realism['ci_high']:.2f}]"
                             + (" (distinguishable)" if realism["distinguishable"] else ""))
            facts = run.get("calibration")
            if facts:
                changed = "changed the choice" if facts["choice_changed"] else "kept the choice"
                lines.append(f"- {run['label']}: ranking with the C2ST {changed} (older ranking: "
                             f"{facts['chosen_by_older_ranking']}, C2ST {fmt(facts['older_choice_c2st'])}; chosen "
                             f"C2ST {fmt(facts['chosen_c2st'])}); verdict: {facts['verdict']}")
        v = entry["verdicts"]
        lines += [f"- calibrated beats augmentation on {len(v['beats_augmentation'])}/{len(METRICS)} "
                  f"({', '.join(v['beats_augmentation']) or 'none'}), today's defaults on "
                  f"{len(v['beats_defaults'])}/{len(METRICS)} ({', '.join(v['beats_defaults']) or 'none'}); "
                  f"near-copies {fmt(v['near_copies'])}; mono64 defaults beat base64 defaults on "
                  f"{len(v['mono64_beats_base64_defaults'])}/{len(METRICS)}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="*", default=None, help="source prefixes (default: all)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--redo", action="store_true", help="measure sources already in table.json again")
    parser.add_argument("--anchors", type=int, default=None, help="in-domain anchors of the domain classifier")
    parser.add_argument("--out", type=Path, default=Path("out/calibration_table"))
    parser.add_argument("--realism-only", action="store_true",
                        help="add the C2ST of each stored run's samples against its shots to table.json, run nothing")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=RUNS, help="which runs (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "table.json"
    table: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    if args.realism_only:
        for source, entry in table.items():
            for run in entry["runs"]:
                store = args.out / f"{source}_{run['label']}.zarr"
                if store.exists() and run.get("contact_sheet"):  # a run with samples
                    run["realism"] = run_realism(str(store))
        saved.write_text(json.dumps(table, indent=1, default=float))
        print(markdown(table))
        return
    for source in args.sources or sources():
        if source in table and not args.redo:
            continue  # measured before (table.json): --redo measures it again
        shots, reference = split(source)
        rows: dict[str, dict[str, Any]] = {}
        runs = []
        for label in args.runs:
            found = one_run(source, label, shots, reference, args)
            runs.append(found.pop("_run"))
            rows.update(found)
            print(f"{source} {label}: {runs[-1]}", flush=True)
        table[source] = {"shots": len(shots), "reference": len(reference), "rows": rows, "runs": runs,
                         "verdicts": verdicts(rows)}
        saved.write_text(json.dumps(table, indent=1, default=float))  # after every source: resumable by hand
    text = markdown(table)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
