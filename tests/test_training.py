"""Base-model training: offline in-domain data, checkpoint/resume equivalence, export to a loadable folder."""

from __future__ import annotations

from pathlib import Path

import torch

from ood_core.base_model.training import (
    EXCLUDED_ASTRONOMICAL,
    PatchSampler,
    TrainConfig,
    export_model,
    natural_images,
    train_base_model,
    warm_start_from_export,
)
from ood_core.method.model import load_model


def tiny_config(total_steps: int) -> TrainConfig:
    return TrainConfig(
        resolution=16,
        block_out_channels=(16, 32),
        attention_levels=(1,),
        batch_size=2,
        total_steps=total_steps,
        checkpoint_every=2,
        warmup_steps=2,
    )


def test_natural_images_are_offline_photographs_without_astronomy() -> None:
    images = natural_images()
    assert len(images) >= 10
    assert not set(images) & set(EXCLUDED_ASTRONOMICAL)
    for image in images.values():
        assert image.ndim == 3 and image.shape[2] == 3
        assert 0.0 <= image.min() and image.max() <= 1.0


def test_patches_are_in_model_range_and_reproducible() -> None:
    sampler = PatchSampler(natural_images(), 32)
    first = sampler.sample(4, torch.Generator().manual_seed(3))
    again = sampler.sample(4, torch.Generator().manual_seed(3))
    assert first.shape == (4, 3, 32, 32)
    assert torch.equal(first, again)
    assert first.min() >= -1.0 and first.max() <= 1.0 and first.std() > 0.05


def test_resumed_training_matches_uninterrupted_training(tmp_path: Path) -> None:
    straight = train_base_model(tiny_config(4), tmp_path / "straight")
    train_base_model(tiny_config(4), tmp_path / "resumed", max_steps=2)
    resumed = train_base_model(tiny_config(4), tmp_path / "resumed")
    assert straight.step == resumed.step == 4
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=False)["unet"]
    b = torch.load(tmp_path / "resumed" / "state.pt", weights_only=False)["unet"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(resumed.losses) == 2 and all(loss > 0 for loss in resumed.losses)


def test_export_writes_a_loadable_diffusers_folder(tmp_path: Path) -> None:
    config = tiny_config(2)
    train_base_model(config, tmp_path / "ckpt")
    log = export_model(config, tmp_path / "ckpt", tmp_path / "model")
    model = load_model(tmp_path / "model", device="cpu")
    assert (model.resolution, model.channels) == (16, 3)
    assert log["steps"] == 2 and log["parameters"] == model.provenance()["parameters"]
    assert (tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    eps = model.predict_noise(torch.zeros(1, 3, 16, 16), 500)
    assert torch.isfinite(eps).all()


def test_warm_start_continues_from_an_exported_folder(tmp_path: Path) -> None:
    config = tiny_config(4)
    train_base_model(config, tmp_path / "ckpt", max_steps=2)
    export_model(config, tmp_path / "ckpt", tmp_path / "model")
    exported = load_model(tmp_path / "model", device="cpu")

    state = warm_start_from_export(tmp_path / "model", tmp_path / "fresh", config)
    assert state.step == 2 and len(state.losses) == 1
    seeded = torch.load(tmp_path / "fresh" / "state.pt", weights_only=False)["unet"]
    assert all(torch.equal(seeded[k], v) for k, v in exported.unet.state_dict().items())
    resumed = train_base_model(config, tmp_path / "fresh")
    assert resumed.step == 4 and len(resumed.losses) == 2
