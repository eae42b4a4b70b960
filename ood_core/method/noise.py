"""Background noise that matches the inputs' (issue 11 item 5): measured from the shots, added to samples on request.

The DDIM decoder smooths pixel noise away, so samples made at a t0 that keeps the sources right have a cleaner
background than the real images. This module measures the inputs' background noise and adds a matching
realization to a sample, in physical units.

**Estimator** (:func:`residual_level`): the high-pass residual ``image - median_filter(image, 3 x 3)`` (smooth
structure, sources included, mostly cancels), sigma-clipped at 3 sigma (``astropy.stats.sigma_clipped_stats``,
MAD-based standard deviation) so that what is left of the sources does not count.

**Model** (:func:`fit_noise_model`): per input the residual level, and the mean 2-D power spectrum of the residuals
(clipped pixels set to zero, each residual scaled to unit level first) divided by the high-pass's own power
transfer (measured on seeded white noise, floored at ``TRANSFER_FLOOR``) as the shape of correlated noise. Noise
realizations (:func:`realization`) are Gaussian random fields with that spectrum (white noise filtered in Fourier
space), scaled to an exact standard deviation. ``gain`` is the estimator's reading of a unit-std realization, so
``level = residual level / gain`` is the pixel noise standard deviation and the estimator reads both inputs and
samples in the same units.

**Matching** (:func:`add_matching_noise`): a sample's own level is measured with the same estimator and only the
missing variance ``max(0, target^2 - own^2)`` is added: a sample already as noisy as the inputs is left alone.
Every realization comes from its own seed (the caller's per-sample stream), so it does not depend on the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.stats import sigma_clip, sigma_clipped_stats
from scipy.ndimage import median_filter

from ood_core.method.seeds import child_seed

FILTER_SIZE = 3
CLIP_SIGMA = 3.0
GAIN_REALIZATIONS = 4
TRANSFER_REALIZATIONS = 8
TRANSFER_FLOOR = 0.2
"""The high-pass's power transfer is divided out down to this value (lower: the lowest frequencies, which the
running median keeps rather than passes, are not blown up)."""
ESTIMATOR = (f"sigma-clipped ({CLIP_SIGMA:g} sigma, MAD std) level of image - median_filter(image, "
             f"{FILTER_SIZE}x{FILTER_SIZE}), over the gain of a unit-std realization")

Image = npt.NDArray[np.float64]


def high_pass(image: npt.ArrayLike) -> Image:
    """The residual of ``image`` after its 3 x 3 running median (NaN pixels: the image's median first)."""
    values = np.asarray(image, dtype=np.float64)
    values = np.where(np.isfinite(values), values, np.nanmedian(values) if np.isfinite(values).any() else 0.0)
    return np.asarray(values - median_filter(values, size=FILTER_SIZE, mode="reflect"), dtype=np.float64)


def residual_level(image: npt.ArrayLike) -> float:
    """The sigma-clipped (MAD) standard deviation of the high-pass residual: the estimator, in the image's units."""
    _, _, std = sigma_clipped_stats(high_pass(image), sigma=CLIP_SIGMA, stdfunc="mad_std")
    return float(std)


def _residual_power(image: npt.ArrayLike) -> tuple[Image, float]:
    """(2-D power spectrum of the unit-level residual with its clipped pixels zeroed, the residual level)."""
    residual = high_pass(image)
    clipped = sigma_clip(residual, sigma=CLIP_SIGMA, stdfunc="mad_std", masked=True)
    level = float(np.ma.std(clipped)) if np.ma.count(clipped) else 0.0
    kept = np.ma.filled(clipped - np.ma.mean(clipped), 0.0) if level > 0 else np.zeros_like(residual)
    power = np.abs(np.fft.fft2(kept / level if level > 0 else kept)) ** 2
    return power, residual_level(image)


def realization(spectrum: npt.ArrayLike, std: float, seed: int) -> Image:
    """A zero-mean Gaussian random field with the 2-D power ``spectrum`` (FFT layout) and exactly ``std``."""
    power = np.asarray(spectrum, dtype=np.float64)
    white = np.random.default_rng(seed).standard_normal(power.shape)
    field = np.fft.ifft2(np.fft.fft2(white) * np.sqrt(power)).real
    field -= field.mean()
    spread = float(field.std())
    return np.asarray(field * (std / spread) if spread > 0 and std > 0 else np.zeros_like(field), dtype=np.float64)


@dataclass(frozen=True)
class NoiseModel:
    """The inputs' background noise: pixel levels per input (physical units), the spectrum's shape, the gain."""

    levels: tuple[float, ...]
    spectrum: Image
    gain: float

    @property
    def level(self) -> float:
        """The run's level: the median of the inputs' (those above zero)."""
        positive = [v for v in self.levels if v > 0]  # a flat (clipped) input has no measurable noise
        return float(np.median(positive)) if positive else 0.0

    def target(self, owner: int | None) -> float:
        """The level a sample should have: its owner input's (per-image normalization), else the run's."""
        return self.levels[owner] if owner is not None and 0 <= owner < len(self.levels) else self.level

    def isotropic(self, bins: int = 8) -> list[float]:
        """The spectrum's shape in ``bins`` radial bins from low to high spatial frequency (mean 1: white noise is
        all ones)."""
        fy = np.fft.fftfreq(self.spectrum.shape[0])[:, None]
        fx = np.fft.fftfreq(self.spectrum.shape[1])[None, :]
        radius = np.hypot(fy, fx) / 0.5
        index = np.minimum((radius * bins).astype(int), bins - 1)
        valid = radius > 0
        sums = np.bincount(index[valid], self.spectrum[valid], bins)
        counts = np.bincount(index[valid], None, bins)
        profile = sums / np.maximum(counts, 1)
        return [round(float(v), 4) for v in profile / max(float(profile.mean()), 1e-300)]

    def to_record(self) -> dict[str, Any]:
        return {"level_run": self.level, "level_per_input": [float(v) for v in self.levels], "gain": self.gain,
                "estimator": ESTIMATOR,
                "spectrum": {"kind": "mean 2-D power spectrum of the inputs' unit-level high-pass residuals "
                                     "over the high-pass's power transfer (FFT layout, mean 1, DC zero); realizations "
                                     "are Gaussian random fields with it. Noise correlated over more than a few pixels "
                                     "is seen only in part (the running median keeps it)",
                             "shape": list(self.spectrum.shape), "isotropic_profile_8_bins": self.isotropic()}}


def high_pass_transfer(shape: tuple[int, int]) -> Image:
    """The estimator's power transfer per frequency: the residual power of unit white noise (seeded, so fixed),
    floored at ``TRANSFER_FLOOR``."""
    white = [np.random.default_rng(child_seed(0, f"noise/transfer/{k}")).standard_normal(shape)
             for k in range(TRANSFER_REALIZATIONS)]
    power = np.mean([_residual_power(image)[0] for image in white], axis=0)
    return np.asarray(np.maximum(power / power.mean(), TRANSFER_FLOOR), dtype=np.float64)


def fit_noise_model(physical: npt.ArrayLike) -> NoiseModel:
    """The noise model of (N, H, W) physical input images."""
    stack = np.asarray(physical, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise ValueError(f"fit_noise_model needs (N, H, W) images, got shape {stack.shape}")
    powers, levels = zip(*(_residual_power(image) for image in stack), strict=True)
    spectrum = np.mean(powers, axis=0) / high_pass_transfer((stack.shape[1], stack.shape[2]))
    spectrum[0, 0] = 0.0
    total = float(spectrum.mean())
    spectrum = spectrum / total if total > 0 else np.ones_like(spectrum)
    readings = [residual_level(realization(spectrum, 1.0, child_seed(0, f"noise/gain/{k}")))
                for k in range(GAIN_REALIZATIONS)]
    gain = float(np.mean(readings))
    return NoiseModel(tuple(float(v) / gain for v in levels), spectrum, gain)


def own_level(image: npt.ArrayLike, model: NoiseModel) -> float:
    """An image's pixel noise level as the model reads it (residual level over the gain)."""
    return residual_level(image) / model.gain


def add_matching_noise(sample_physical: npt.ArrayLike, model: NoiseModel, seed: int,
                       owner: int | None = None) -> tuple[Image, float]:
    """The sample plus noise of the model's spectrum with the missing variance (target^2 - own^2, not below 0),
    and the standard deviation added."""
    sample = np.asarray(sample_physical, dtype=np.float64)
    target, own = model.target(owner), own_level(sample, model)
    added = float(np.sqrt(max(0.0, target**2 - own**2)))
    return sample + realization(model.spectrum, added, seed), added


def add_noise_to_stack(physical: npt.ArrayLike, model: NoiseModel, seeds: Sequence[int],
                       owners: Sequence[int] | None = None) -> tuple[Image, list[float]]:
    """:func:`add_matching_noise` over (N, H, W) samples, one seed (and owner) each."""
    stack = np.asarray(physical, dtype=np.float64)
    pairs = [add_matching_noise(image, model, seeds[i], None if owners is None else int(owners[i]))
             for i, image in enumerate(stack)]
    if not pairs:
        return stack.copy(), []
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]
