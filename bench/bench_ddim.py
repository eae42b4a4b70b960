"""Batched DDIM inversion + generation vs the reference code's one-image-at-a-time loop.

Same model, same real FITS cutouts, same process. Prints seconds per image for both and the ratio.
Usage: .venv/bin/python bench/bench_ddim.py [--model models/base64] [--batch 16] [--steps 20] [--t0 600]
"""

from __future__ import annotations

import argparse
import time
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
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--t0", type=int, default=600)
    parser.add_argument("--source", default="glimpse")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="auto")
    files = sorted(FITS_DIR.glob(f"{args.source}_*.fits"))
    images, _ = read_fits_batch(files)
    batch = prepare_batch(images, resolution=model.resolution, channels=model.channels)
    x = torch.from_numpy(batch.images)
    while x.shape[0] < args.batch:  # repeat the few-shot set up to one batch
        x = torch.cat([x, x])[: args.batch]
    x = x[: args.batch]
    grid = ddim.timestep_grid(args.t0, args.steps, model.num_train_timesteps)
    print(f"device={model.device} images={x.shape[0]} shape={tuple(x.shape[1:])} t0={args.t0} K={args.steps} "
          f"threads={torch.get_num_threads()}")
    ddim.ddim_invert(model, x[:2], grid[:3], batch_size=2)  # warm-up

    start = time.perf_counter()
    for i in range(x.shape[0]):  # the reference implementation's way: one image per network call
        latent = ddim.ddim_invert(model, x[i : i + 1], grid, batch_size=1)
        ddim.ddim_generate(model, latent, grid, batch_size=1)
    looped = time.perf_counter() - start

    start = time.perf_counter()
    latents = ddim.ddim_invert(model, x, grid, batch_size=args.batch)
    ddim.ddim_generate(model, latents, grid, batch_size=args.batch)
    batched = time.perf_counter() - start

    n = x.shape[0]
    print(f"one-at-a-time: {looped:.2f} s ({looped / n:.3f} s/image)")
    print(f"batched ({args.batch}):   {batched:.2f} s ({batched / n:.3f} s/image)")
    print(f"speed-up: {looped / batched:.2f}x")


if __name__ == "__main__":
    main()
