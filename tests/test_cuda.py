"""The CUDA fast path (issue 12): no host sync in the DDIM step loop, batch size from free memory, bfloat16 guarded
by the reconstruction check, channels_last, torch.compile, screening on the device, determinism on the GPU; and
training the base model on the GPU (issue 10, item 3): bfloat16 autocast, the batched patch sampler, resumable on CPU.

Marker ``cuda``: skipped without a GPU (CI); ``bench/gpu_check.sh`` runs them on a lent GPU. No Prefect and no
shared data: inputs are the project's own demo skies, so the device needs only the carried wheels.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_core.base_model.demo_skies import write_demo_skies
from ood_core.base_model.patches import BatchedPatchSampler
from ood_core.base_model.training import TrainConfig, read_checkpoint, train_base_model
from ood_core.base_model.training_data import natural_images
from ood_core.method import ddim
from ood_core.method.acceptance import CriteriaGeometry
from ood_core.method.model import FrozenDiffusionModel, auto_batch_size, cached_model, load_model
from ood_core.pipeline import PipelineParameters, prepare_run, run_in_process, sample_stage, stages
from ood_core.pipeline.sequence import stage_model
from ood_core.store import RunWriter, open_run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODEL = Path(__file__).resolve().parents[1] / "models" / "base64"
SAMPLE_NAMES = ("samples", "samples_physical", "sample_latents", "sample_seed", "sample_parent", "sample_criteria",
                "sample_nearest_input_distance")


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


def test_the_pipelined_sample_stage_equals_the_serial_one_on_the_gpu(skies: list[str], tmp_path: Path) -> None:
    """Issue 22: screening on side streams in two threads, samples back through pinned buffers, conversion and
    appends in a thread: the same arrays and counters as the serial order."""
    params = PipelineParameters(inputs=skies, store=str(tmp_path / "base.zarr"), samples=40, steps=6, t0=600,
                                device="cuda", prior="ppca", reference_count=16, batch_size=16, seed=2, eta=0.2)
    run_id = prepare_run(params, cached_model(params.model, params.device, params.dtype))
    writer = RunWriter.open(params.store, run_id)
    stages.stage_invert(params, stage_model(params, writer), writer)
    stages.stage_prior(params, stage_model(params, writer), writer)
    results = []
    for pipelined in (False, True):
        store = tmp_path / f"pipelined_{pipelined}.zarr"
        shutil.copytree(params.store, store)
        copy = params.model_copy(update={"store": str(store)})
        run = RunWriter.open(copy.store, run_id)
        model = stage_model(copy, run)
        ctx = sample_stage.SampleContext(copy, run, model)
        counters = sample_stage.run_blocks(ctx, model, sample_stage.appender_of(run), range(ctx.plan.blocks), None,
                                       pipelined=pipelined)
        run.flush()
        results.append(({name: run.read(name) for name in SAMPLE_NAMES}, counters.to_dict()))
    (serial, serial_counters), (piped, piped_counters) = results
    assert serial_counters == piped_counters and len(serial["samples"]) > 0
    for name in SAMPLE_NAMES:
        assert serial[name].tobytes() == piped[name].tobytes(), name


# ---------------------------------------------------------------------------------------------------------
# Training on the GPU (issue 10, item 3)


def test_batched_patches_on_the_gpu_never_wait_and_match_the_cpu() -> None:
    images = natural_images()
    on_gpu, on_cpu = BatchedPatchSampler(images, 64, device="cuda"), BatchedPatchSampler(images, 64)
    generators = [torch.Generator(device="cuda").manual_seed(7) for _ in range(2)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside sample() raises
    try:
        first, again = (on_gpu.sample(256, generator) for generator in generators)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert first.device.type == "cuda" and first.shape == (256, 3, 64, 64) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert -1.0 <= float(first.min()) and float(first.max()) <= 1.0
    picks, side = torch.tensor([0, 5, 12]), torch.tensor([64.0, 100.0, 256.0])
    y0, x0 = torch.tensor([3.0, 17.0, 100.0], dtype=torch.float64), torch.tensor([0.0, 9.0, 300.0], dtype=torch.float64)
    flips = torch.tensor([[False, True], [True, False], [True, True]])
    gpu = on_gpu.crop(picks.cuda(), y0.cuda(), x0.cuda(), side.cuda(), flips.cuda())
    torch.testing.assert_close(gpu.cpu(), on_cpu.crop(picks, y0, x0, side, flips), atol=1e-6, rtol=0)


def test_training_on_the_gpu_in_bfloat16_learns_and_resumes_on_the_cpu(tmp_path: Path) -> None:
    config = TrainConfig(resolution=32, block_out_channels=(32, 64), attention_levels=(1,), batch_size=64,
                         total_steps=40, checkpoint_every=10, warmup_steps=5)  # device, dtype, sampler: auto
    reads: list[float] = []
    state = train_base_model(config, tmp_path / "ckpt", progress=lambda step, end, loss: reads.append(loss))
    assert state.step == 40 and len(state.losses) == 4 and np.isfinite(state.losses).all()
    assert state.losses[-1] < 0.6 * state.losses[0], state.losses  # it learns (CPU float32: 0.89 -> 0.19)
    assert np.isfinite(reads).all() and len(reads) == 40
    gpu = {"device": "cuda", "device_name": torch.cuda.get_device_name(), "dtype": "bfloat16", "sampler": "batched"}
    assert state.history == [{"start": 0, "end": 40, **gpu}]
    saved = read_checkpoint(tmp_path / "ckpt")
    assert saved is not None and saved["generator_device"] == "cuda"
    assert all(t.device.type == "cpu" for t in saved["unet"].values())
    # The same checkpoint continues on the CPU (float32, the loop sampler, a CPU generator re-seeded from the step).
    on_cpu = dataclasses.replace(config, device="cpu", total_steps=44, batch_size=16)
    resumed = train_base_model(on_cpu, tmp_path / "ckpt")
    cpu = {"device": "cpu", "device_name": "cpu", "dtype": "float32", "sampler": "loop"}
    assert resumed.step == 44 and resumed.history == [{"start": 0, "end": 40, **gpu}, {"start": 40, "end": 44, **cpu}]
    assert np.isfinite(resumed.losses[-1]) and resumed.losses[-1] < 0.6 * state.losses[0], resumed.losses
