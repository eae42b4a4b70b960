"""Loading diffusers model folders: layouts, learned variance, checksums, device rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from ood_core.errors import ConfigurationError
from ood_core.method.model import load_model, resolve_device, weights_sha256


def tiny_unet(out_channels: int = 3) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def save_pipeline_folder(folder: Path, out_channels: int = 3) -> Path:
    tiny_unet(out_channels).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(folder / "scheduler")
    return folder


def test_pipeline_folder_loads_with_schedule_and_checksum(tmp_path: Path) -> None:
    folder = save_pipeline_folder(tmp_path / "model")
    model = load_model(folder, device="cpu")
    expected = hashlib.sha256((folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    assert model.weights_sha256 == expected == weights_sha256(folder / "unet")
    assert (model.channels, model.resolution, model.num_train_timesteps) == (3, 16, 1000)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod
    assert torch.allclose(model.alphas_cumprod.cpu().float(), reference)
    assert not any(p.requires_grad for p in model.unet.parameters())
    info = model.provenance()
    json.dumps(info)
    assert info["weights_sha256"] == expected and info["parameters"] > 0


def test_bare_unet_folder_with_scheduler_config_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    tiny_unet().save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=500).save_config(folder)
    model = load_model(folder, device="cpu")
    assert model.num_train_timesteps == 500


def test_learned_variance_model_returns_only_eps_channels(tmp_path: Path) -> None:
    model = load_model(save_pipeline_folder(tmp_path / "lv", out_channels=6), device="cpu")
    assert model.learned_variance
    eps = model.predict_noise(torch.zeros(2, 3, 16, 16), 10)
    assert eps.shape == (2, 3, 16, 16)


def test_missing_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    tiny_unet().save_pretrained(tmp_path / "nosched")
    with pytest.raises(ConfigurationError, match="no scheduler config"):
        load_model(tmp_path / "nosched", device="cpu")


def test_not_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match="not a diffusers model folder"):
        load_model(tmp_path / "empty", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_refused_and_auto_falls_back() -> None:
    with pytest.raises(ConfigurationError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_pickle_weights_are_read_only_when_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    tiny_unet().save_pretrained(folder / "unet", safe_serialization=False)  # diffusion_pytorch_model.bin
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    assert not list((folder / "unet").glob("*.safetensors"))
    with pytest.raises(ConfigurationError, match=r"no \.safetensors weights \(found diffusion_pytorch_model\.bin\)"):
        load_model(folder, device="cpu")
    allowed = load_model(folder, device="cpu", allow_pickle_weights=True)
    reference = load_model(save_pipeline_folder(tmp_path / "safe"), device="cpu")
    expected = reference.unet.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in allowed.unet.state_dict().items())


def test_a_planted_pickle_beside_safetensors_is_never_loaded(tmp_path: Path) -> None:
    import os
    import pickle

    class Planted:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = save_pipeline_folder(tmp_path / "model")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": Planted()}, protocol=2))
    model = load_model(folder, device="cpu")
    assert model.channels == 3 and not (tmp_path / "pwned").exists()
