"""Base models side by side on every dev source: OOD sample fidelity and reconstruction, same seed and settings.

For each source of ``$OOD_DEV_DATA/cutouts_128``
(the dev set, docs/DESIGN.md section 9) the split is ``bench/calibration_table.py``'s (the first
shots are the run's inputs, the rest the unseen reference). Every model runs the pipeline with the same fixed
settings (the pipeline's defaults without calibration: t0 600, slerp toward a prior draw at 0.3-0.7, scalar
prior; ``--t0/--strategy/--prior`` change them for every model alike) and ``evaluate_run`` scores its samples
against the reference: pixel W1 / sd, power spectrum (dex), relative source-count error, Minkowski functionals
(lower is better), near-copy fraction, and the run's median reconstruction PSNR of its inputs at its t0.
A model "beats" another on a source when it is better on more than half of the four metrics, or when the other
made no sample at all (its screening accepted none of the candidates).

Writes ``table.json`` and ``table.md`` under ``--out`` (rows already there are kept unless ``--redo``).
Usage: PYTHONPATH=. .venv/bin/python bench/compare_base_models.py models/base64 models/mono64 [--sources ...]
       [--samples 8] [--steps 20] [--out out/compare_base_models]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_table import METRICS, fmt, row_of, sources, split

from ood_core.calibration import calibrate
from ood_core.evaluation import evaluate_run
from ood_core.pipeline import PipelineParameters, run_in_process


def one_model(source: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run and evaluate one model on one source; its metrics row plus the run's facts."""
    shots, reference = split(source)
    name = label(model, args)
    store = str(args.out / f"{source}_{name}.zarr")
    shutil.rmtree(store, ignore_errors=True)
    fields: dict[str, Any] = {"inputs": shots, "store": store, "samples": args.samples, "steps": args.steps,
                              "seed": args.seed, "device": "cpu", "model": model, "calibrate": args.calibrate}
    if args.tile:
        fields["tile"] = args.tile
    fields.update({k: getattr(args, k) for k in ("t0", "strategy", "prior") if getattr(args, k) is not None})
    started = time.perf_counter()
    result = run_in_process(PipelineParameters(**fields), choose=calibrate if args.calibrate else None)
    facts = {"model": Path(model).name, "tile": args.tile, "calibrated": args.calibrate,
             "acceptance": round(result.acceptance_rate, 4), "median_psnr_db": round(result.median_psnr_db, 2),
             "run_seconds": round(time.perf_counter() - started, 1),
             "shots": len(shots), "reference": len(reference)}
    if result.n_samples == 0:
        return {**dict.fromkeys((*METRICS, "source_count_mean", "near_copy_fraction")), "n": 0, **facts,
                "note": "no sample passed the screening within the candidate budget"}
    evaluation = evaluate_run(store, reference, out_dir=args.out / f"{source}_{name}_eval", baselines=(),
                              device="cpu")
    row = row_of(evaluation["sets"]["method"])
    return {**row, **facts, "contact_sheet": evaluation["plots"].get("contact_sheet")}


def label(model: str, args: argparse.Namespace) -> str:
    """The row name of a model under this invocation's options: folder name, +tile, +calibrated."""
    return Path(model).name + (f"@tile{args.tile}" if args.tile else "") + ("+calib" if args.calibrate else "")


def beats(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether row ``a`` beats row ``b`` (majority of metrics, or ``b`` made nothing) and the metrics it wins."""
    if not b.get("n"):
        return bool(a.get("n")), ["b made no sample"] if a.get("n") else []
    if not a.get("n"):
        return False, []
    won = [m for m in METRICS if a[m] is not None and b[m] is not None and a[m] < b[m]]
    return len(won) > len(METRICS) / 2, won


def markdown(table: dict[str, dict[str, Any]], models: list[str]) -> str:
    head = ["| source | model | n | acceptance | recon PSNR (dB) | " + " | ".join(METRICS) + " | copies |",
            "|---" * (len(METRICS) + 6) + "|"]
    lines = head
    for source, rows in table.items():
        for name in models:
            if name in rows:
                r = rows[name]
                lines.append(f"| {source} | {name} | {r['n']} | {fmt(r['acceptance'])} | {fmt(r['median_psnr_db'])} | "
                             + " | ".join(fmt(r.get(m)) for m in METRICS) + f" | {fmt(r.get('near_copy_fraction'))} |")
    first = models[0]
    lines.append("")
    for name in models[1:]:
        wins = [s for s, rows in table.items() if first in rows and name in rows and beats(rows[name], rows[first])[0]]
        lines.append(f"- {name} beats {first} on {len(wins)} of {len(table)} sources ({', '.join(wins) or 'none'})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders; the first is the one the others are judged against")
    parser.add_argument("--sources", nargs="*", default=None)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--t0", type=int, default=None)
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--prior", default=None)
    parser.add_argument("--tile", type=int, default=None,
                        help="cut the 128x128 cutouts into tiles of this side at the native pixel scale (--tile) "
                             "instead of block-averaging them to the model's size")
    parser.add_argument("--calibrate", action="store_true", help="let each run calibrate its settings")
    parser.add_argument("--redo", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("out/compare_base_models"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "table.json"
    table: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    names = [label(m, args) for m in args.models]
    for source in args.sources or sources():
        for model, name in zip(args.models, names, strict=True):
            if name in table.get(source, {}) and not args.redo:
                continue
            table.setdefault(source, {})[name] = one_model(source, model, args)
            print(json.dumps({"source": source, **table[source][name]}, default=str), flush=True)
            path.write_text(json.dumps(table, indent=2, default=str))
    (args.out / "table.md").write_text(markdown(table, names))
    print(markdown(table, names))


if __name__ == "__main__":
    main()
