"""Base-model training: offline in-domain data, checkpoint/resume equivalence, export to a loadable folder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from ood_core.base_model.patches import PatchSampler
from ood_core.base_model.training import (
    CHECKPOINT_FILE,
    EXCLUDED_ASTRONOMICAL,
    TrainConfig,
    export_model,
    natural_images,
    read_checkpoint,
    train_base_model,
    warm_start_from_export,
)
from ood_core.errors import ConfigurationError
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
    a = read_checkpoint(tmp_path / "straight")["unet"]  # type: ignore[index]
    b = read_checkpoint(tmp_path / "resumed")["unet"]  # type: ignore[index]
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
    seeded = read_checkpoint(tmp_path / "fresh")["unet"]  # type: ignore[index]
    assert all(torch.equal(seeded[k], v) for k, v in exported.unet.state_dict().items())
    resumed = train_base_model(config, tmp_path / "fresh")
    assert resumed.step == 4 and len(resumed.losses) == 2


# ---------------------------------------------------------------------------------------------------------
# Checkpoints never run code (issue 13, item 1)


class _PlantedPayload:
    """What an attacker pickles: unpickling it calls os.system to create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_is_safetensors_with_json_and_no_pickle(tmp_path: Path) -> None:
    from safetensors import safe_open

    train_base_model(tiny_config(2), tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == [CHECKPOINT_FILE]
    with safe_open(str(tmp_path / "ckpt" / CHECKPOINT_FILE), framework="pt") as handle:  # type: ignore[no-untyped-call]
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert any(k.startswith("state.unet.") for k in keys) and "state.generator" in keys
    assert '"step": 2' in metadata["ood_checkpoint"]
    state = read_checkpoint(tmp_path / "ckpt")
    assert state is not None and state["step"] == 2
    assert isinstance(state["optimizer"]["param_groups"][0]["betas"], tuple)


@pytest.mark.parametrize("how", ["plain pickle", "torch.save"])
def test_planted_pickle_checkpoint_is_refused_and_never_runs(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    marker = tmp_path / "pwned"
    # First show that the payload is live: the full unpickler runs it.
    pickle.loads(pickle.dumps(_PlantedPayload(marker)))
    assert marker.exists()
    marker.unlink()
    payload = {"unet": _PlantedPayload(marker), "step": 0}
    if how == "plain pickle":
        (folder / "state.pt").write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, folder / "state.pt")
    with pytest.raises(ConfigurationError, match="refused to load this pickle checkpoint") as info:
        train_base_model(tiny_config(2), folder)
    assert "state.pt" in str(info.value) and "weights_only=True" in str(info.value)
    with pytest.raises(ConfigurationError, match="refused"):
        export_model(tiny_config(2), folder, tmp_path / "model")
    assert not marker.exists()


def test_legacy_pickle_checkpoint_of_plain_tensors_still_resumes(tmp_path: Path) -> None:
    config = tiny_config(4)
    train_base_model(config, tmp_path / "new", max_steps=2)
    state = read_checkpoint(tmp_path / "new")
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "state.pt")  # what earlier versions wrote
    resumed = train_base_model(config, tmp_path / "old")
    straight = train_base_model(config, tmp_path / "new")
    assert resumed.step == straight.step == 4
    a, b = read_checkpoint(tmp_path / "old"), read_checkpoint(tmp_path / "new")
    assert a is not None and b is not None and all(torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])


def test_a_pickle_beside_a_safetensors_checkpoint_is_ignored(tmp_path: Path) -> None:
    train_base_model(tiny_config(2), tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    (tmp_path / "ckpt" / "state.pt").write_bytes(pickle.dumps({"x": _PlantedPayload(marker)}))
    assert train_base_model(tiny_config(3), tmp_path / "ckpt").step == 3
    assert not marker.exists()
