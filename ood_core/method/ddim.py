"""Deterministic DDIM inversion and DDIM generation over a timestep grid, batched.

Symbols (DESIGN section 2): a_t are the cumulative alphas of the model's schedule, eps = eps(x_t, t).
One DDIM move from step t to step s, in either direction:

    x0_hat = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
    x_s    = sqrt(a_s) * x0_hat + sqrt(1 - a_s - sigma^2) * eps + sigma * z

with sigma = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s) when generating (s < t) and
sigma = 0 when inverting. The grid is t_0 = 0 < t_1 < ... < t_K = t0; state 0 is the clean image
(a = 1), so inversion and generation each take exactly K network evaluations.

On a GPU the walk never waits for the device: a_t are read from the host copy of the schedule, every chunk's
result stays on the device, and the only transfer back is the whole result at the end (``output="host"``, the
default) or none at all (``output="device"``, for a caller that goes on computing there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ood_core.errors import ConfigurationError
from ood_core.method.model import FrozenDiffusionModel

StepProgress = Callable[[int, int], None]
"""Called as progress(steps_done, steps_total) after each network evaluation over the whole batch."""

Output = Literal["host", "device"]
"""Where ddim_invert / ddim_generate return their result: the CPU, or the model's device."""


def timestep_grid(t0: int, steps: int, num_train_timesteps: int) -> list[int]:
    """The K + 1 integer timesteps 0 = t_0 < ... < t_K = t0, evenly spaced."""
    if not 0 < t0 < num_train_timesteps:
        raise ConfigurationError(f"t0={t0} must lie in 1..{num_train_timesteps - 1} for this model's schedule")
    if not 1 <= steps <= t0:
        raise ConfigurationError(f"steps={steps} must lie in 1..t0 ({t0}); fewer steps are coarser but faster")
    grid = np.round(np.linspace(0, t0, steps + 1)).astype(int)
    return [int(t) for t in grid]


def _alpha(model: FrozenDiffusionModel, grid: Sequence[int], k: int) -> float:
    """a at grid index k; index 0 is the clean image (a = 1)."""
    return 1.0 if k == 0 else model.alphas_host[grid[k]]


def _ddim_move(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    x0_hat = (x - math.sqrt(1.0 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0_hat + math.sqrt(1.0 - a_to) * eps


def _chunks(n: int, batch_size: int) -> list[slice]:
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def ddim_invert(
    model: FrozenDiffusionModel,
    images: torch.Tensor,
    grid: Sequence[int],
    *,
    batch_size: int = 16,
    progress: StepProgress | None = None,
    output: Output = "host",
) -> torch.Tensor:
    """Walk clean images (N, C, H, W) in [-1, 1] up the grid to their latents at t0 (eta = 0)."""
    steps = len(grid) - 1
    out, chunks = _output_and_chunks(model, images, batch_size)
    step = _step_counter(progress, steps * len(chunks))
    for chunk in chunks:
        x = images[chunk].to(model.device, torch.float32)
        for k in range(steps):
            eps = model.predict_noise(x, grid[k])
            x = _ddim_move(x, eps, _alpha(model, grid, k), _alpha(model, grid, k + 1))
            step()
        out[chunk] = x
    return _returned(out, output)


def _output_and_chunks(
    model: FrozenDiffusionModel, start: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, list[slice]]:
    """The result tensor of a walk from ``start`` (float32 on the model's device) and the batches it walks."""
    out = torch.empty(start.shape, dtype=torch.float32, device=model.device)
    return out, _chunks(start.shape[0], batch_size)


def _step_counter(progress: StepProgress | None, total: int) -> Callable[[], None]:
    """A callable counting network evaluations, each reported to ``progress`` as (done, total)."""
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return step


def _returned(out: torch.Tensor, output: Output) -> torch.Tensor:
    return out if output == "device" else out.cpu()


def _per_sample_noise(generators: list[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    # One generator per sample: a sample's noise does not depend on its batch neighbours.
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def _to_device(noise: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU-drawn noise onto the device without making the host wait (pinned memory, asynchronous copy)."""
    if device.type == "cpu":
        return noise
    return noise.pin_memory().to(device, non_blocking=True)


@torch.no_grad()
def ddim_generate(
    model: FrozenDiffusionModel,
    latents: torch.Tensor,
    grid: Sequence[int],
    *,
    eta: float = 0.0,
    seeds: Sequence[int] | None = None,
    batch_size: int = 16,
    clip: bool = True,
    progress: StepProgress | None = None,
    output: Output = "host",
) -> torch.Tensor:
    """Walk latents (N, C, H, W) at t0 down the grid to images; eta > 0 needs one seed per latent."""
    if not 0.0 <= eta <= 1.0:
        raise ConfigurationError(f"eta={eta} must lie in [0, 1] (0 is deterministic DDIM)")
    if eta > 0 and (seeds is None or len(seeds) != latents.shape[0]):
        raise ConfigurationError("eta > 0 adds noise: pass one seed per latent so samples are reproducible")
    steps = len(grid) - 1
    out, chunks = _output_and_chunks(model, latents, batch_size)
    step = _step_counter(progress, steps * len(chunks))
    for chunk in chunks:
        x = latents[chunk].to(model.device, torch.float32)
        generators = (
            [torch.Generator().manual_seed(int(s)) for s in seeds[chunk]] if seeds is not None and eta > 0 else []
        )
        for k in range(steps, 0, -1):
            a_t, a_s = _alpha(model, grid, k), _alpha(model, grid, k - 1)
            eps = model.predict_noise(x, grid[k])
            x0_hat = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
            sigma = eta * math.sqrt((1.0 - a_s) / (1.0 - a_t)) * math.sqrt(1.0 - a_t / a_s) if eta > 0 else 0.0
            x = math.sqrt(a_s) * x0_hat + math.sqrt(max(1.0 - a_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * _to_device(_per_sample_noise(generators, x.shape[1:]), x.device)
            step()
        out[chunk] = x.clamp(-1.0, 1.0) if clip else x
    return _returned(out, output)


def psnr(reference: torch.Tensor, estimate: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB; the model space [-1, 1] has data range 2."""
    mse = (reference.float() - estimate.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


@dataclass
class Reconstruction:
    """Inverted latents, their round-trip images and the PSNR of each input."""

    grid: list[int]
    latents: torch.Tensor
    reconstructions: torch.Tensor
    psnr_db: torch.Tensor

    def summary(self) -> dict[str, Any]:
        values = self.psnr_db.numpy()
        return {
            "t0": self.grid[-1],
            "steps": len(self.grid) - 1,
            "median_psnr_db": float(np.median(values)),
            "min_psnr_db": float(values.min()),
            "max_psnr_db": float(values.max()),
        }


def invert_and_reconstruct(
    model: FrozenDiffusionModel,
    images: torch.Tensor,
    t0: int,
    steps: int,
    *,
    batch_size: int = 16,
    progress: StepProgress | None = None,
) -> Reconstruction:
    """Invert to t0, then generate back with eta = 0: the method's premise, measured per input."""
    grid = timestep_grid(t0, steps, model.num_train_timesteps)
    half: StepProgress | None = None
    if progress is not None:
        report = progress

        def half(done: int, total: int) -> None:
            report(done, 2 * total)

    latents = ddim_invert(model, images, grid, batch_size=batch_size, progress=half, output="device")
    second: StepProgress | None = None
    if progress is not None:
        report2 = progress

        def second(done: int, total: int) -> None:
            report2(total + done, 2 * total)

    reconstructions = ddim_generate(model, latents, grid, eta=0.0, batch_size=batch_size, progress=second)
    latents = latents.cpu()
    return Reconstruction(grid, latents, reconstructions, psnr(images.clamp(-1, 1), reconstructions))


@dataclass
class BandwidthScan:
    """Median reconstruction PSNR against t0, and the t0 chosen from it."""

    chosen_t0: int
    threshold_db: float
    steps: int
    curve: list[dict[str, float]]
    threshold_met: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen_t0": self.chosen_t0,
            "threshold_db": self.threshold_db,
            "steps": self.steps,
            "threshold_met": self.threshold_met,
            "curve": self.curve,
            "rule": "largest t0 whose median reconstruction PSNR >= threshold; smallest t0 if none does",
        }


def scan_bandwidth(
    model: FrozenDiffusionModel,
    images: torch.Tensor,
    t0_values: Sequence[int],
    steps: int,
    *,
    threshold_db: float = 30.0,
    max_images: int = 8,
    batch_size: int = 16,
    progress: StepProgress | None = None,
) -> BandwidthScan:
    """Choose the bandwidth t0: larger t0 is more Gaussian and diverse, smaller reconstructs better."""
    if not t0_values:
        raise ConfigurationError("t0_values is empty: give at least one t0 to scan")
    subset = images[:max_images]
    curve: list[dict[str, float]] = []
    for i, t0 in enumerate(sorted(t0_values)):
        scan_steps = min(steps, t0)
        result = invert_and_reconstruct(model, subset, t0, scan_steps, batch_size=batch_size)
        curve.append({"t0": float(t0), **{k: float(v) for k, v in result.summary().items() if k != "t0"}})
        if progress is not None:
            progress(i + 1, len(t0_values))
    passing = [int(p["t0"]) for p in curve if p["median_psnr_db"] >= threshold_db]
    chosen = max(passing) if passing else int(min(t0_values))
    return BandwidthScan(chosen, threshold_db, steps, curve, bool(passing))


@torch.no_grad()
def in_domain_reference_latents(
    model: FrozenDiffusionModel,
    count: int,
    t0: int,
    steps: int,
    *,
    seed: int = 0,
    batch_size: int = 16,
    progress: StepProgress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own samples (from N(0, I) at the last timestep) and their latents at t0.

    These are the in-domain reference the geometric criteria keep candidates away from.
    Returns (images, latents_at_t0).
    """
    generator = torch.Generator().manual_seed(seed)
    shape = (count, model.channels, model.resolution, model.resolution)
    noise = torch.randn(shape, generator=generator)
    full_grid = timestep_grid(model.num_train_timesteps - 1, steps, model.num_train_timesteps)
    images = ddim_generate(model, noise, full_grid, batch_size=batch_size, progress=progress, output="device")
    latents = ddim_invert(model, images, timestep_grid(t0, steps, model.num_train_timesteps),
                          batch_size=batch_size)
    return images.cpu(), latents
