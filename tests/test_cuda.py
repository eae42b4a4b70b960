"""The CUDA fast path (issue 12): no host sync in the DDIM step loop, batch size from free memory, bfloat16 guarded
by the reconstruction check, channels_last, torch.compile, screening on the device, determinism on the GPU.

Marker ``cuda``: skipped without a GPU (CI); ``bench/gpu_check.sh`` runs them on a lent GPU. No Prefect and no
shared data: inputs are the project's own demo skies, so the device needs only the carried wheels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_core.base_model.demo_skies import write_demo_skies
from ood_core.method import ddim
from ood_core.method.model import FrozenDiffusionModel, auto_batch_size, load_model
from ood_core.method.sampler import CriteriaGeometry
from ood_core.pipeline import PipelineParameters, run_in_process
from ood_core.store import open_run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODEL = Path(__file__).resolve().parents[1] / "models" / "base64"


@pytest.fixture(scope="module")
def gpu_model() -> FrozenDiffusionModel:
    return load_model(MODEL, device="cuda", dtype="auto")


@pytest.fixture(scope="module")
def skies(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [str(p) for p in write_demo_skies(tmp_path_factory.mktemp("skies"), n=6, seed=3)]


@pytest.fixture
def sync_errors() -> Iterator[None]:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _latents(n: int, model: FrozenDiffusionModel) -> torch.Tensor:
    generator = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn((n, model.channels, model.resolution, model.resolution), generator=generator, device="cuda")


def test_defaults_on_cuda_are_the_fast_path(gpu_model: FrozenDiffusionModel) -> None:
    assert gpu_model.dtype == torch.bfloat16 and gpu_model.channels_last
    assert next(gpu_model.unet.parameters()).dtype == torch.bfloat16
    assert gpu_model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_step_loop_never_waits_for_the_device(gpu_model: FrozenDiffusionModel, sync_errors: None) -> None:
    latents = _latents(40, gpu_model)
    grid = ddim.timestep_grid(600, 6, gpu_model.num_train_timesteps)
    images = ddim.ddim_generate(gpu_model, latents, grid, batch_size=16, output="device")
    back = ddim.ddim_invert(gpu_model, images, grid, batch_size=16, output="device")
    assert images.device.type == "cuda" and back.shape == latents.shape


def test_batch_size_from_free_memory_fits(gpu_model: FrozenDiffusionModel) -> None:
    batch = auto_batch_size(gpu_model)
    _, total = torch.cuda.mem_get_info()
    assert 16 < batch <= 4096
    torch.cuda.reset_peak_memory_stats()
    grid = ddim.timestep_grid(600, 1, gpu_model.num_train_timesteps)
    ddim.ddim_generate(gpu_model, _latents(batch, gpu_model), grid, batch_size=batch, output="device")
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() < total


def test_compiled_model_matches_and_pads_a_smaller_last_batch() -> None:
    plain = load_model(MODEL, device="cuda", dtype="bfloat16")
    compiled = load_model(MODEL, device="cuda", dtype="bfloat16", compile=True)
    x = _latents(24, plain)
    full = compiled.predict_noise(x[:16], 500)
    short = compiled.predict_noise(x[16:], 500)  # 8 images: padded to the compiled 16
    expected = plain.predict_noise(x, 500)
    assert short.shape == (8, *x.shape[1:])
    torch.testing.assert_close(torch.cat([full, short]), expected, atol=0.05, rtol=0.05)


def test_screening_on_the_device_matches_the_cpu() -> None:
    generator = torch.Generator().manual_seed(1)
    ood, reference = torch.randn((12, 3 * 64 * 64), generator=generator), torch.randn((16, 3 * 64 * 64),
                                                                                      generator=generator)
    candidates = torch.randn((300, 3 * 64 * 64), generator=generator)
    on_cpu = CriteriaGeometry(ood, reference).criteria(candidates)
    on_gpu = CriteriaGeometry(ood.cuda(), reference.cuda()).criteria(candidates.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-4)


def _run(skies: list[str], store: Path, **overrides: object) -> str:
    settings: dict[str, object] = {"inputs": skies, "store": str(store), "samples": 24, "steps": 6, "t0": 600,
                                   "device": "cuda", "prior": "ppca", "candidate_budget": 20_000,
                                   "reference_count": 16}
    params = PipelineParameters(**{**settings, **overrides})
    return run_in_process(params).run_id


def test_a_run_records_the_guarded_precision_and_the_batch_size(skies: list[str], tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    run_id = _run(skies, store)
    ds = open_run(str(store), run_id, chunks=None)
    record = ds.attrs["ood_run"]
    precision, compute = record["precision"], record["compute"]
    assert precision["requested"] == "bfloat16"
    medians = precision["median_psnr_db"]
    assert precision["fell_back"] == (medians["bfloat16"] < medians["float32"] - precision["tolerance_db"])
    assert precision["used"] == ("float32" if precision["fell_back"] else "bfloat16")
    assert compute["batch_size_from"] == "free GPU memory" and compute["batch_size"] > 16
    assert compute["channels_last"] is True
    assert ds.sizes["sample"] > 0 and np.isfinite(ds["samples"].values).all()


def test_same_seed_same_samples_on_the_gpu(skies: list[str], tmp_path: Path) -> None:
    first = _run(skies, tmp_path / "a.zarr", batch_size=64)
    second = _run(skies, tmp_path / "b.zarr", batch_size=64)
    a = open_run(str(tmp_path / "a.zarr"), first, chunks=None)["samples"].values
    b = open_run(str(tmp_path / "b.zarr"), second, chunks=None)["samples"].values
    np.testing.assert_array_equal(a, b)
