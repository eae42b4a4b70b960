"""The whole comparison on one few-shot split of the shared FITS data: method vs baselines vs reference.

Split: the first ``--inputs`` GLIMPSE cutouts of ``cutouts_128`` (sorted by name) are the few-shot inputs,
the remaining GLIMPSE cutouts are the unseen reference. The pipeline runs on the inputs with the shipped
model (``run_in_process``), then ``evaluate_run`` runs every baseline through the same frozen model and prints
one table: every row is measured against the reference; ``inputs`` (the real few-shot images) is the floor
a metric reaches with real images of the domain at these set sizes.

Usage: nice .venv/bin/python bench/bench_evaluate.py [--inputs 6] [--samples 16] [--t0 600] [--steps 25]
       [--finetune-steps 200] [--out out/bench_evaluate] [--threads 1] [--device cpu]
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

from ood_core.evaluation import evaluate_run, format_table  # noqa: E402
from ood_core.evaluation.metrics import METRIC_DOCS  # noqa: E402
from ood_core.method.model import load_model  # noqa: E402
from ood_core.pipeline import run_in_process  # noqa: E402
from ood_core.pipeline.config import PipelineParameters, default_model_path  # noqa: E402

FITS = ROOT.parent / "shared" / "data" / "fits" / "cutouts_128"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=6, help="GLIMPSE cutouts used as the few-shot inputs")
    parser.add_argument("--samples", type=int, default=16, help="samples of the method (and of each baseline)")
    parser.add_argument("--t0", type=int, default=600)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps K (run and N(0, I) baselines)")
    parser.add_argument("--reference-count", type=int, default=16, help="in-domain reference latents of the run")
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--finetune-batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "out" / "bench_evaluate"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    files = sorted(str(p) for p in FITS.glob("glimpse_*.fits"))
    if len(files) < args.inputs + 2:
        print(f"need at least {args.inputs + 2} GLIMPSE cutouts in {FITS}, found {len(files)}")
        return 2
    inputs, reference = files[: args.inputs], files[args.inputs :]
    out = Path(args.out)
    store = out / "store.zarr"
    if store.exists():
        shutil.rmtree(store)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    model = load_model(default_model_path(), device=args.device)
    params = PipelineParameters(inputs=inputs, store=str(store), samples=args.samples, t0=args.t0, steps=args.steps,
                                reference_count=args.reference_count, batch_size=16, device=args.device,
                                seed=args.seed)
    t = time.perf_counter()
    run = run_in_process(params)
    pipeline_seconds = time.perf_counter() - t
    print(f"split: {len(inputs)} inputs, {len(reference)} reference GLIMPSE cutouts ({FITS})")
    print(f"run {run.run_id}: {run.n_samples} samples, t0={run.t0}, K={args.steps}, median PSNR "
          f"{run.median_psnr_db:.2f} dB, acceptance rate {run.acceptance_rate:.4f} ({pipeline_seconds:.1f} s)")

    t = time.perf_counter()

    def progress(message: str) -> None:
        print(f"  [{time.perf_counter() - t:6.1f} s] {message}", flush=True)

    result = evaluate_run(str(store), reference, run.run_id, out_dir=out, finetune_steps=args.finetune_steps,
                          finetune_batch_size=args.finetune_batch_size, seed=args.seed, device=args.device,
                          model=model, progress=progress)
    print()
    print(format_table(result, markdown=False))
    print()
    for key, _ in (("pixel_w1", ""), ("spectrum_dex", ""), ("domain_separation", ""), ("nearest_input_ratio", "")):
        print(f"{key}: {METRIC_DOCS[key]}")
    ft = result["baselines"].get("finetune")
    if ft:
        print(f"finetune: {ft['steps']} steps x batch {ft['batch_size']}, loss {ft['first_loss']:.3f} -> "
              f"{ft['final_loss_mean_last_10pct']:.3f}, {ft['seconds_per_step']:.2f} s/step")
    accuracy = result["sets"]["method"]["domain_classifier_loo_accuracy"]
    print(f"domain classifier (in-domain vs reference) leave-one-out accuracy: {accuracy:.3f}")
    print(f"reference source counts per image: {result['reference']['statistics']['source_count_mean']:.2f}")
    print("timings (s):", json.dumps(result["timings"]))
    print(f"total {time.perf_counter() - started:.1f} s; JSON {result['json']}; plots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
