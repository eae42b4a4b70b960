"""The GPU fast path's CPU-visible parts: dtype and batch-size defaults, the precision guard, the sampler on an
explicit device, the command-line switches. (The CUDA behaviour itself is in test_cuda.py, marker ``cuda``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ood_cli.main import build_parser
from ood_core.method import ddim
from ood_core.method.model import CPU_BATCH_SIZE, FrozenDiffusionModel, auto_batch_size, load_model, resolve_dtype
from ood_core.method.precision import guarded_reconstruction
from ood_core.method.prior import fit_prior
from ood_core.method.sampler import GeometricSampler, SamplerConfig

MODEL = Path(__file__).resolve().parents[1] / "models" / "base64"


@pytest.fixture(scope="module")
def model() -> FrozenDiffusionModel:
    return load_model(MODEL, device="cpu")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 64, 64), generator=generator) * 2 - 1


def test_auto_dtype_is_bfloat16_on_cuda_and_float32_on_the_cpu() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32


def test_cpu_defaults_change_nothing(model: FrozenDiffusionModel) -> None:
    assert auto_batch_size(model) == CPU_BATCH_SIZE == 16
    assert not model.channels_last and not model.compiled
    assert model.dtype == torch.float32
    assert model.alphas_host == tuple(model.alphas_cumprod.tolist())
    info = model.provenance()
    assert info["channels_last"] is False and info["compiled"] is False


def test_results_on_the_device_are_the_host_results(model: FrozenDiffusionModel) -> None:
    images = _images(3)
    grid = ddim.timestep_grid(300, 1, model.num_train_timesteps)
    host = ddim.ddim_invert(model, images, grid, batch_size=2)
    device = ddim.ddim_invert(model, images, grid, batch_size=2, output="device")
    assert device.device == model.device
    assert torch.equal(host, device)


def test_precision_guard_keeps_or_falls_back_on_the_inputs_own_reconstruction(model: FrozenDiffusionModel) -> None:
    # bfloat16 convolutions are very slow on this CPU; float64 stands in for "not float32": the same rule applies
    images = _images(2, seed=1)
    other = model.with_dtype(torch.float64)
    assert other.dtype == torch.float64 and model.dtype == torch.float32  # a copy: the model itself is unchanged
    kept_model, _, decision = guarded_reconstruction(other, images, 300, 1, tolerance_db=0.5)
    assert kept_model is other and decision.used == "float64" and not decision.fell_back
    assert set(decision.median_psnr_db) == {"float64", "float32"}
    assert abs(decision.median_psnr_db["float64"] - decision.median_psnr_db["float32"]) < 0.5
    # a tolerance no reduced precision can meet: the run falls back to float32, with float32's reconstruction
    fallback_model, fallback, strict = guarded_reconstruction(other, images, 300, 1, tolerance_db=-100.0)
    assert strict.fell_back and strict.used == "float32" and fallback_model.dtype == torch.float32
    reference = ddim.invert_and_reconstruct(model, images, 300, 1)
    assert torch.equal(fallback.reconstructions, reference.reconstructions)
    assert strict.to_dict()["median_psnr_db"]["float32"] == pytest.approx(float(reference.psnr_db.median()))
    # float32 asked for: no second pass
    same_model, _, plain = guarded_reconstruction(model, images, 300, 1)
    assert same_model is model and plain.used == "float32" and list(plain.median_psnr_db) == ["float32"]


def test_sampler_on_an_explicit_cpu_device_is_the_default_sampler() -> None:
    generator = torch.Generator().manual_seed(3)
    ood = torch.randn((6, 48), generator=generator)
    reference = torch.randn((5, 48), generator=generator) + 3.0
    prior = fit_prior(ood, "scalar")
    config = SamplerConfig(candidate_batch=64, candidate_budget=256)
    for strategy in ("prior", "slerp_ood_prior", "slerp_ood_ood"):
        plain = GeometricSampler(prior, ood, reference, SamplerConfig(**{**config.__dict__, "strategy": strategy}),
                                 seed=5)
        placed = GeometricSampler(prior, ood, reference, SamplerConfig(**{**config.__dict__, "strategy": strategy}),
                                  seed=5, device="cpu")
        a, b = list(plain.batches(20, 8)), list(placed.batches(20, 8))
        assert [len(x) for x in a] == [len(x) for x in b]
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.latents, y.latents) and torch.equal(x.criteria, y.criteria)
            assert torch.equal(x.seeds, y.seeds) and torch.equal(x.parents, y.parents)


def test_command_line_switches_reach_the_parameters(tmp_path: Path) -> None:
    from ood_cli.main import _parameters

    parser = build_parser()
    args = parser.parse_args(["run", "a.fits", "--store", str(tmp_path / "s.zarr"), "--dtype", "float32",
                              "--compile", "--batch-size", "512"])
    params = _parameters(args, args.inputs, args.store)
    assert (params.dtype, params.compile, params.batch_size) == ("float32", True, 512)
    defaults = _parameters(parser.parse_args(["run", "a.fits", "--store", "s.zarr"]), ["a.fits"], "s.zarr")
    assert (defaults.dtype, defaults.compile, defaults.batch_size) == ("auto", False, None)
    assert (defaults.shards, defaults.dask_address) == (1, None)
    sharded = parser.parse_args(["run", "a.fits", "--store", "s.zarr", "--shards", "4", "--dask-address",
                                 "tcp://10.0.0.1:8786"])
    params = _parameters(sharded, ["a.fits"], "s.zarr")
    assert (params.shards, params.dask_address) == (4, "tcp://10.0.0.1:8786")
