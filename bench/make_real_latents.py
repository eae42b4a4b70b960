"""Invert real FITS cutouts and the model's own in-domain samples to t0; save both for bench_sampler.py.

Usage: .venv/bin/python bench/make_real_latents.py OUT.pt [--source glimpse] [--t0 600] [--steps 20] [--references 32]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ood_core.io.fits import read_fits_batch
from ood_core.method import ddim
from ood_core.method.model import load_model
from ood_core.method.normalization import prepare_batch
from ood_core.pipeline.config import default_model_path

FITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "fits" / "cutouts_128"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--source", default="glimpse")
    parser.add_argument("--t0", type=int, default=600)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--references", type=int, default=32)
    args = parser.parse_args()
    model = load_model(args.model)
    images, _ = read_fits_batch(sorted(FITS_DIR.glob(f"{args.source}_*.fits")))
    batch = prepare_batch(images, resolution=model.resolution, channels=model.channels)
    grid = ddim.timestep_grid(args.t0, args.steps, model.num_train_timesteps)
    ood = ddim.ddim_invert(model, torch.from_numpy(batch.images), grid)
    _, reference = ddim.in_domain_reference_latents(model, args.references, args.t0, args.steps, seed=1)
    torch.save({"ood": ood, "reference": reference, "t0": args.t0, "steps": args.steps, "source": args.source},
               args.out)
    print(f"saved {ood.shape[0]} OOD and {reference.shape[0]} reference latents to {args.out}")


if __name__ == "__main__":
    main()
