"""Acceptance of each prior family x candidate strategy x band setting on a finished run's real latents.

Reads the inverted input latents and the in-domain reference latents that a run stored, and screens a fixed
candidate budget with every combination. Tells which prior/strategy suits a data set before a long run.
Usage: .venv/bin/python bench/bench_screening_strategies.py STORE [--budget 2048]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import zarr

from ood_core.method.prior import fit_prior
from ood_core.method.sampler import GeometricSampler, SamplerConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--run", help="run id (default: the last run in the store)")
    parser.add_argument("--budget", type=int, default=2048)
    args = parser.parse_args()
    runs = zarr.open_group(args.store, mode="r")["runs"]
    assert isinstance(runs, zarr.Group)
    name = args.run or sorted(runs.group_keys())[-1]
    group = runs[name]
    ood = torch.from_numpy(np.asarray(group["input_latents"][:])).flatten(1)
    reference = torch.from_numpy(np.asarray(group["reference_latents"][:])).flatten(1)
    print(f"run {name}: {ood.shape[0]} OOD latents, {reference.shape[0]} reference latents, D={ood.shape[1]}")
    print(f"{'prior':<7} {'strategy':<16} {'band sides':<15} {'accepted':>8} {'rate':>7} {'cand/s':>8}")
    for prior_kind in ("scalar", "ppca"):
        prior = fit_prior(ood.double(), prior_kind)
        for strategy in ("prior", "slerp_ood_prior", "slerp_ood_ood"):
            for sides in ("reference_side", "both"):
                config = SamplerConfig(strategy=strategy, candidate_budget=args.budget, band_sides=sides)
                sampler = GeometricSampler(prior, ood, reference, config, seed=0)
                start = time.perf_counter()
                accepted = sum(batch.latents.shape[0] for batch in sampler.batches(10**9, 256))
                seconds = time.perf_counter() - start
                print(f"{prior_kind:<7} {strategy:<16} {sides:<15} {accepted:>8} {accepted / args.budget:>7.3f} "
                      f"{args.budget / seconds:>8.0f}")


if __name__ == "__main__":
    main()
