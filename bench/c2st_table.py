"""Issue 23's table: does the C2ST tell real images from fakes on every dev source?

For every source of ``$OOD_DEV_DATA/cutouts_128``
(the dev set, docs/DESIGN.md section 9) all cutouts go through the pipeline's ingest with the
shipped one-channel model's resolution (read, block-average to 64x64, one asinh normalization per source) and
back to physical units. The cutouts are split as a run's calibration splits its shots (``split_shots``: a third
held out, chosen by the seed): the kept ones are "the shots", the others the held-out real cutouts. Rows, each a
C2ST (``ood_core.evaluation.c2st``) against the held-out cutouts unless said:

- ``held_out_vs_shots``: the held-out cutouts against the shots (real against real: should be about 0.5); beside
  it the mean, min and max over ``--splits`` seeded splits, and ``contiguous``: the split of
  ``bench/calibration_table.py`` (the last third of the files in name order, a contiguous part of the field);
- ``flips``: the seven non-trivial flips/rotations of the shots (augmentation, the reference point; all copies);
- ``n01``: the shipped model's own samples from N(0, I) (DDIM, ``--steps``), mapped with the source's normalization;
- ``white_noise``, ``blurred`` (Gaussian, sigma 2 px), ``sources_removed``: the controls of
  ``ood_core.evaluation.controls`` made from the shots.

Also the near-copy fraction of each model-space set against the shots (the run's novelty rule, up to
flips/rotations). Writes ``table.json``, ``table.md`` and a contact sheet per source under ``--out`` and, with
``--measurements``, the JSON there too.

Usage: PYTHONPATH=. .venv/bin/python bench/c2st_table.py [--sources glimpse ...] [--n01 16] [--steps 10]
       [--splits 5] [--out out/c2st_table] [--measurements docs/measurements/c2st_table_DATE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ood_core.calibration import split_shots
from ood_core.evaluation import controls
from ood_core.evaluation.baselines import in_domain_samples
from ood_core.evaluation.c2st import c2st
from ood_core.evaluation.sheets import contact_sheet
from ood_core.method.dihedral import dihedral
from ood_core.method.model import load_model
from ood_core.method.normalization import model_to_physical
from ood_core.method.novelty import NoveltyRule
from ood_core.pipeline import PipelineParameters, ingest
from ood_core.pipeline.config import SHIPPED_MODELS

CUTOUTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fits" / "cutouts_128"
ROWS = ("held_out_vs_shots", "flips", "n01", "white_noise", "blurred", "sources_removed")


def files_of(source: str) -> list[str]:
    return sorted(str(p) for p in CUTOUTS.glob(f"{source}_y*_x*.fits"))


def contiguous(n: int) -> tuple[list[int], list[int]]:
    """bench/calibration_table.py's split: the first n - max(3, n // 3) (at most 10) kept, the rest held out."""
    shots = min(10, n - max(3, n // 3))
    return list(range(shots)), list(range(shots, n))


def sources() -> list[str]:
    return sorted({p.name.split("_y")[0] for p in CUTOUTS.glob("*_y*_x*.fits")})


def real_cutouts(source: str, model: Any) -> tuple[torch.Tensor, np.ndarray, Any]:
    """All cutouts of a source through the pipeline's ingest: model space, physical units, the batch."""
    params = PipelineParameters(inputs=files_of(source), store="unused.zarr", device="cpu")
    batch = ingest(params, model.resolution, model.channels).batch
    return torch.from_numpy(batch.images), model_to_physical(batch.images, batch.params,
                                                             np.arange(len(batch.images))), batch


def sets_of(source: str, model: Any, n01: int, steps: int, seed: int) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """{name: (model-space images, physical images)} of one source: shots, held out and every candidate."""
    everything, all_physical, batch = real_cutouts(source, model)
    kept, held = split_shots(len(everything), seed)
    model_space = torch.cat([everything[kept], everything[held]])
    physical = np.concatenate([all_physical[kept], all_physical[held]])
    n = len(kept)

    def from_model(images: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        return images, model_to_physical(images.numpy(), batch.params[:1], np.zeros(len(images), np.int64))

    def from_physical(images: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        return torch.empty(0), images.astype(np.float32)

    flips = torch.cat([dihedral(model_space[:n], k) for k in range(1, 8)])
    samples = in_domain_samples(model, n01, steps, seed=seed, batch_size=16)
    return {"shots": (model_space[:n], physical[:n]), "held_out": (model_space[n:], physical[n:]),
            "flips": (flips, model_to_physical(flips.numpy(), batch.params[:1], np.zeros(len(flips), np.int64))),
            "n01": from_model(samples),
            "white_noise": from_physical(controls.white_noise(physical[:n], seed)),
            "blurred": from_physical(controls.blurred(physical[:n])),
            "sources_removed": from_physical(controls.sources_removed(physical[:n], seed))}


def measure(source: str, model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The C2ST rows of one source (and the near-copy fraction of the model-space sets)."""
    sets = sets_of(source, model, args.n01, args.steps, args.seed)
    shots_model, shots = sets["shots"]
    held = sets["held_out"][1]
    rule = NoveltyRule(factor=args.novelty_factor)
    rows: dict[str, Any] = {}
    for name in ROWS:
        started = time.perf_counter()
        if name == "held_out_vs_shots":
            result = c2st(shots, held, seed=args.seed)
            copies_of = sets["held_out"][0]
        else:
            parents = np.tile(np.arange(len(shots)), 7) if name == "flips" else None
            result = c2st(held, sets[name][1], seed=args.seed, candidate_parents=parents)
            copies_of = sets[name][0]
        row = result.to_dict()
        row.pop("features")
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["near_copy_fraction"] = (float(rule.evaluate(copies_of, shots_model).is_near_copy.double().mean())
                                     if len(copies_of) else None)
        rows[name] = row
        print(f"{source:<10} {name:<18} {result.line()} tiles {result.tile_accuracy:.2f} "
              f"copies {row['near_copy_fraction']}", flush=True)
    rows["held_out_vs_shots"]["over_splits"] = over_splits(source, model, args)
    sheet = args.out / f"{source}_c2st_sheet.png"
    picks = {name: sets[name][1] for name in ("shots", "held_out", "flips", "n01", "white_noise", "blurred",
                                              "sources_removed")}
    contact_sheet(picks, sheet, per_row=6, display_reference="shots",
                  title=f"{source}: shots, held-out real cutouts and the C2ST's candidates")
    return {"shots": len(shots), "held_out": len(held), "rows": rows, "contact_sheet": str(sheet)}


def over_splits(source: str, model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Held out vs shots over ``args.splits`` seeded splits, and over the contiguous split."""
    _, physical, _ = real_cutouts(source, model)
    accuracies = []
    for seed in range(args.splits):
        kept, held = split_shots(len(physical), seed)
        accuracies.append(c2st(physical[kept], physical[held], seed=args.seed).accuracy)
    kept, held = contiguous(len(physical))
    result = c2st(physical[kept], physical[held], seed=args.seed)
    print(f"{source:<10} splits {np.round(accuracies, 2).tolist()} contiguous {result.line()}", flush=True)
    return {"seeds": list(range(args.splits)), "accuracies": accuracies, "mean": float(np.mean(accuracies)),
            "min": float(np.min(accuracies)), "max": float(np.max(accuracies)),
            "contiguous": {k: v for k, v in result.to_dict().items() if k != "features"}}


def markdown(table: dict[str, Any]) -> str:
    head = "| source | shots/held | " + " | ".join(ROWS) + " | held out, splits mean (min-max) | contiguous |"
    lines = [head, "|---" * (len(ROWS) + 4) + "|"]
    for source, entry in table.items():
        cells = []
        for name in ROWS:
            row = entry["rows"][name]
            copies = "" if row["near_copy_fraction"] is None else f", copies {row['near_copy_fraction']:.2f}"
            cells.append(f"{row['accuracy']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]{copies}")
        splits = entry["rows"]["held_out_vs_shots"]["over_splits"]
        cells.append(f"{splits['mean']:.2f} ({splits['min']:.2f}-{splits['max']:.2f})")
        cells.append(f"{splits['contiguous']['accuracy']:.2f}")
        lines.append(f"| {source} | {entry['shots']}/{entry['held_out']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="*", default=None)
    parser.add_argument("--n01", type=int, default=16, help="N(0, I) samples of the shipped model per source")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of the N(0, I) samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", type=int, default=5, help="seeded splits of held out vs shots")
    parser.add_argument("--novelty-factor", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("out/c2st_table"))
    parser.add_argument("--measurements", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(SHIPPED_MODELS[1], device="cpu")
    table = {source: measure(source, model, args) for source in args.sources or sources()}
    record = {"model": str(SHIPPED_MODELS[1]), "weights_sha256": model.weights_sha256, "n01": args.n01,
              "steps": args.steps, "seed": args.seed, "splits": args.splits, "date": time.strftime("%Y-%m-%d"),
              "command": "PYTHONPATH=. .venv/bin/python bench/c2st_table.py " + " ".join(sys.argv[1:]),
              "table": table}
    (args.out / "table.json").write_text(json.dumps(record, indent=1))
    if args.measurements:
        args.measurements.write_text(json.dumps(record, indent=1))
    text = markdown(table)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
