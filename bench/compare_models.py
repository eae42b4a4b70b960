"""OOD sample fidelity of one dev source for several base models, same settings (model-card figures).

Split: the first ``--shots`` cutouts of SOURCE in ``cutouts_128`` (sorted by name) are the few-shot inputs, the
next ``--reference`` are the unseen reference. Each model runs the pipeline (``run_in_process``, PPCA prior by
default) and ``evaluate_run`` scores its samples and the augmentation baseline against the reference; one JSON
line per (model, set) is printed (pixel W1/sigma, P(k) dex, source counts, acceptance, reconstruction PSNR).

Usage: nice .venv/bin/python bench/compare_models.py glimpse models/base64 models/mono64 [--prior ppca]
       [--t0 600] [--steps 25] [--samples 16] [--out out/compare_models]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ood_core.evaluation import evaluate_run  # noqa: E402
from ood_core.pipeline import run_in_process  # noqa: E402
from ood_core.pipeline.config import PipelineParameters  # noqa: E402

CUTOUTS = ROOT.parent / "shared" / "data" / "fits" / "cutouts_128"
KEYS = ("set", "n", "pixel_w1_rel", "spectrum_dex", "source_count_mean", "source_count_rel")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="dev source prefix in cutouts_128, e.g. glimpse")
    parser.add_argument("models", nargs="+", help="model folders to compare")
    parser.add_argument("--shots", type=int, default=6)
    parser.add_argument("--reference", type=int, default=8)
    parser.add_argument("--prior", default="ppca", choices=["ppca", "scalar"])
    parser.add_argument("--t0", type=int, default=600)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "compare_models")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(CUTOUTS.glob(f"{args.source}_*.fits"))
    shots, reference = files[: args.shots], files[args.shots: args.shots + args.reference]
    for model in args.models:
        started = time.time()
        store = args.out / f"{args.source}_{Path(model).name}_{args.prior}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        params = PipelineParameters(inputs=[str(x) for x in shots], store=str(store), model=model,
                                    samples=args.samples, t0=args.t0, steps=args.steps, prior=args.prior,
                                    device="cpu", seed=args.seed)
        result = run_in_process(params)
        evaluation = evaluate_run(str(store), [str(x) for x in reference], out_dir=store.with_suffix(".eval"),
                                  baselines=["augmentation"], device="cpu")
        for row in evaluation["table"]:
            print(json.dumps({"source": args.source, "model": Path(model).name,
                              "acceptance": round(result.acceptance_rate, 3),
                              "median_psnr_db": round(result.median_psnr_db, 2),
                              **{k: row.get(k) for k in KEYS}}), flush=True)
        print(json.dumps({"model": Path(model).name, "seconds": round(time.time() - started)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
