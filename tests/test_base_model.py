"""The shipped base model: checksum recorded in its card, and it reconstructs real out-of-domain cutouts."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ood_core.io.fits import read_fits_batch
from ood_core.method import ddim
from ood_core.method.model import FrozenDiffusionModel, weights_sha256
from ood_core.method.normalization import prepare_batch

RECONSTRUCTION_BAR_DB = 30.0


def test_card_checksum_matches_the_shipped_weights(
    shipped_model_dir: Path, shipped_model: FrozenDiffusionModel
) -> None:
    card = json.loads((shipped_model_dir / "card.json").read_text())
    assert card["weights_sha256"] == weights_sha256(shipped_model_dir / "unet") == shipped_model.weights_sha256
    assert (shipped_model_dir / "samples.png").stat().st_size > 10_000
    assert (shipped_model_dir / "README.md").read_text().count(shipped_model.weights_sha256) == 1
    size_mb = (shipped_model_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size / 2**20
    assert size_mb <= 20
    assert (shipped_model.resolution, shipped_model.channels) == (64, 3)
    schedule = shipped_model.scheduler_config
    assert (schedule["num_train_timesteps"], schedule["beta_schedule"], schedule["prediction_type"]) == (
        1000, "linear", "epsilon")


def test_real_cutouts_reconstruct_above_the_bar(fits_dir: Path, shipped_model: FrozenDiffusionModel) -> None:
    # GLIMPSE star fields and the Horsehead nebula: never seen in training (natural photographs).
    files = sorted((fits_dir / "cutouts_128").glob("glimpse_*.fits"))[:3]
    files += sorted((fits_dir / "cutouts_128").glob("horsehead_*.fits"))[:3]
    images, quarantined = read_fits_batch(files)
    assert not quarantined
    batch = prepare_batch(images, resolution=64, channels=3)
    result = ddim.invert_and_reconstruct(shipped_model, torch.from_numpy(batch.images), t0=600, steps=40)
    assert result.summary()["median_psnr_db"] > RECONSTRUCTION_BAR_DB
    # The latents at t0 are noise-like: norm close to sqrt(D), unlike the images themselves.
    dim = result.latents[0].numel()
    norms = result.latents.flatten(1).norm(dim=1) / dim**0.5
    assert torch.all((norms > 0.8) & (norms < 1.2))
