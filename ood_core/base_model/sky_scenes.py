"""Simulated skies, composed batch by batch on the training device from the GalSim stamp library.

Every image is a new scene, so a training run never sees the same sky twice (the regime in which diffusion
models generalise rather than memorise; Kadkhodaie et al. 2023). One scene, in units of the background noise
sigma per model pixel, on a fine grid ``oversampling`` x the model's (:mod:`.sky_library`), with a margin around
the frame so that sources just outside still shine in:

1. **Stars**: up to ``star_slots`` point sources at uniform positions (bilinear splat on the fine grid), each
   present with the image's density (log-uniform, or none), fluxes from a truncated power law
   N(>F) ~ F^-slope (log N - log S) above a faint limit near the noise.
2. **Galaxies**: library stamps of three size classes at uniform positions, flipped or turned (D4), with their
   own power-law fluxes; the image's galaxy density may be zero.
3. **Diffuse emission** (a share of images): log-normal power-law random fields (spectral index 2-4),
   filaments (the thin level sets of a second field, under a log-normal envelope), a gradient.
4. **One PSF** of the library for the whole image (stars, galaxies and diffuse emission), by FFT.
5. The fine grid is summed into model pixels; **saturation** (a share of images) flattens the brightest pixels.
6. **Noise**: unit Gaussian background, white or correlated (a Gaussian-filtered field, as after resampling),
   plus shot noise with variance proportional to the signal.
7. **Normalization exactly as the pipeline maps a FITS image** (:mod:`ood_core.method.normalization`): the
   sigma-clipped median subtracted, the 0.5 / 99.8 percentile interval to [0, 1] with clipping, the run's
   stretch (asinh a = 0.1 for most images; sqrt, linear or log for ``other_stretch_share``), x = 2 y - 1.

With C channels (a band group), sources and diffuse emission get a colour per channel and the noise is
independent per channel; each channel is normalized on its own, as bands are.

Every random number comes from the caller's ``torch.Generator`` on the scene's device: the same generator
state gives the same batch (on one device), so a CPU training run resumes bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ood_core.base_model.sky_library import SkyLibrary
from ood_core.errors import ConfigurationError
from ood_core.method.normalization import DEFAULT_LOWER_PERCENTILE, DEFAULT_STRETCH_PARAMS, DEFAULT_UPPER_PERCENTILE

Range = tuple[float, float]
STRETCHES = ("asinh", "sqrt", "linear", "log")


@dataclass(frozen=True)
class SceneConfig:
    """The distribution of simulated scenes. Fluxes in units of the background noise sigma x model pixels."""

    resolution: int = 64
    channels: int = 1
    margin: int = 16
    """Model pixels around the frame where sources are placed too (their light reaches into the frame)."""
    star_slots: int = 1024
    empty_star_share: float = 0.05
    star_density: Range = (0.003, 1.0)
    """Share of the star slots that hold a star, log-uniform per image."""
    star_faint_peak: Range = (0.5, 10.0)
    """Peak (noise sigmas) of the faintest star, log-uniform per image; its flux scales with the PSF's area."""
    star_slope: Range = (0.3, 1.1)
    galaxy_slots: tuple[int, int, int] = (24, 6, 2)
    empty_galaxy_share: float = 0.3
    galaxy_density: Range = (0.03, 1.0)
    galaxy_faint_peak: Range = (0.5, 10.0)
    psf_fwhm_power: float = -0.8
    """Library PSFs are drawn with weight FWHM^power: sharp PSFs (as in most survey images) more often."""
    galaxy_slope: Range = (0.5, 1.5)
    max_flux: float = 3e5
    diffuse_share: float = 0.55
    diffuse_amplitude: Range = (0.5, 1000.0)
    """Peak-to-floor contrast of the diffuse emission in noise sigmas, log-uniform."""
    diffuse_index: Range = (2.0, 4.0)
    shot_noise: Range = (0.002, 1.0)
    """Shot-noise variance per unit signal (1 / gain), log-uniform."""
    extinction_share: float = 0.2
    """Share of images behind a dark cloud: everything dimmed by exp(-tau), tau up to 4, edges soft to sharp."""
    correlated_noise_share: float = 0.3
    saturation_share: float = 0.2
    colour_spread: float = 0.5
    """Standard deviation of the log flux ratio between adjacent channels (band groups)."""
    other_stretch_share: float = 0.15

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.channels not in (1, 3) or self.margin < 0:
            raise ConfigurationError(f"scene config: resolution >= 8, channels 1 or 3, margin >= 0 "
                                     f"(got {self.resolution}, {self.channels}, {self.margin})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uniform(shape: tuple[int, ...], gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=gen.device) * (high - low) + low


def _log_uniform(shape: tuple[int, ...], gen: torch.Generator, bounds: Range) -> torch.Tensor:
    return torch.exp(_uniform(shape, gen, math.log(bounds[0]), math.log(bounds[1])))


def _power_law(shape: tuple[int, ...], gen: torch.Generator, faint: torch.Tensor, slope: torch.Tensor,
               ceiling: float) -> torch.Tensor:
    """Fluxes with N(>F) ~ F^-slope above ``faint`` (per image, broadcast over the last axis), capped."""
    u = _uniform(shape, gen).clamp_(min=1e-12)
    return (faint[:, None] * u.pow(-1.0 / slope[:, None])).clamp_(max=ceiling)


def _colours(shape: tuple[int, ...], channels: int, gen: torch.Generator, spread: float) -> torch.Tensor:
    """Flux ratio per channel (..., C): a log-linear spectral slope across the bands, mean ratio about 1."""
    if channels == 1:
        return torch.ones(*shape, 1, device=gen.device)
    slope = torch.randn(shape, generator=gen, device=gen.device) * spread
    steps = torch.arange(channels, device=gen.device, dtype=torch.float32) - (channels - 1) / 2
    return torch.exp(slope[..., None] * steps)


class SkyScenes:
    """Draws batches of simulated skies in [-1, 1] (N, C, R, R) on ``device`` from a :class:`SkyLibrary`."""

    def __init__(self, library: SkyLibrary, config: SceneConfig | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.library = library
        self.config = config or SceneConfig()
        self.device = torch.device(device)
        cfg, dev = self.config, self.device
        self.oversampling = library.config.oversampling
        self.fine = self.oversampling * (cfg.resolution + 2 * cfg.margin)
        psf_side = library.psfs.shape[1]
        self.fft_size = _fft_size(self.fine + psf_side - 1)
        self.psf_fft = _psf_transforms(library, self.fft_size, dev)
        self.psf_fwhm = torch.from_numpy(library.psf_fwhm).to(dev)
        self.psf_weight = self.psf_fwhm.pow(cfg.psf_fwhm_power)
        self.galaxies = [torch.from_numpy(g).reshape(g.shape[0], -1).to(dev) for g in library.galaxies]
        self.views = [_dihedral_views(g.shape[1], dev) for g in library.galaxies]
        self.sides = [g.shape[1] for g in library.galaxies]
        n = self.fft_size
        ky = torch.fft.fftfreq(n, device=dev)[:, None]
        kx = torch.fft.rfftfreq(n, device=dev)[None, :]
        self.k = torch.sqrt(ky**2 + kx**2).clamp_(min=1.0 / n)
        self.k2 = ky**2 + kx**2
        r = cfg.resolution
        self.noise_k2 = torch.fft.fftfreq(r, device=dev)[:, None] ** 2 + torch.fft.rfftfreq(r, device=dev)[None, :] ** 2

    def describe(self) -> dict[str, Any]:
        return {"scenes": self.config.to_dict(), "library": self.library.describe()}

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A batch of normalized skies (the Sampler protocol of the training loop)."""
        return self.normalize(self.physical(batch_size, generator), generator)

    def physical(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A batch of skies in noise-sigma units (N, C, R, R), before the normalization."""
        if generator.device.type != self.device.type:
            raise ConfigurationError(f"simulated skies are drawn on {self.device}; the generator is on "
                                     f"{generator.device}: give one on the same device")
        b, c, n = batch_size, self.config.channels, self.fft_size
        canvas = torch.zeros(b * c * n * n, device=self.device)
        psf = torch.multinomial(self.psf_weight, b, replacement=True, generator=generator)
        area = 1.133 * self.psf_fwhm[psf].clamp(min=1.0) ** 2  # flux of a unit-peak Gaussian of that FWHM
        self._add_stars(canvas, b, area, generator)
        for size_class in range(len(self.galaxies)):
            self._add_galaxies(canvas, b, size_class, area, generator)
        fine = canvas.view(b, c, n, n)
        fine = (fine + self._diffuse(b, generator)) * self._transmission(b, generator)
        signal = self._convolve_and_bin(fine, psf)
        signal = self._saturate(signal, generator)
        return signal + self._noise(signal, generator)

    def _flat_index(self, y: torch.Tensor, x: torch.Tensor, image: torch.Tensor, channel: int) -> torch.Tensor:
        n, c = self.fft_size, self.config.channels
        return ((image * c + channel) * n + y) * n + x

    def _add_stars(self, canvas: torch.Tensor, b: int, area: torch.Tensor, gen: torch.Generator) -> None:
        cfg = self.config
        k = cfg.star_slots
        density = _log_uniform((b,), gen, cfg.star_density) * (_uniform((b,), gen) >= cfg.empty_star_share)
        present = _uniform((b, k), gen) < density[:, None]
        flux = _power_law((b, k), gen, _log_uniform((b,), gen, cfg.star_faint_peak) * area,
                          _uniform((b,), gen, *cfg.star_slope), cfg.max_flux) * present
        pos = _uniform((b, k, 2), gen) * (self.fine - 1)
        colour = _colours((b, k), cfg.channels, gen, cfg.colour_spread)
        base = pos.floor()
        frac = pos - base
        base = base.long()
        image = torch.arange(b, device=self.device)[:, None]
        for dy in (0, 1):
            wy = frac[..., 0] if dy else 1 - frac[..., 0]
            for dx in (0, 1):
                wx = frac[..., 1] if dx else 1 - frac[..., 1]
                for ch in range(cfg.channels):
                    index = self._flat_index(base[..., 0] + dy, base[..., 1] + dx, image, ch)
                    canvas.index_add_(0, index.reshape(-1), (flux * wy * wx * colour[..., ch]).reshape(-1))

    def _add_galaxies(self, canvas: torch.Tensor, b: int, size_class: int, area: torch.Tensor,
                      gen: torch.Generator) -> None:
        cfg, dev = self.config, self.device
        k, side, stamps = cfg.galaxy_slots[size_class], self.sides[size_class], self.galaxies[size_class]
        if k == 0:
            return
        density = _log_uniform((b,), gen, cfg.galaxy_density) * (_uniform((b,), gen) >= cfg.empty_galaxy_share)
        present = _uniform((b, k), gen) < density[:, None]
        low, high = self.library.config.half_light_radius[size_class]
        galaxy_area = 1.133 * 4 * low * high  # a unit-peak Gaussian as wide as the class's typical galaxy
        flux = _power_law((b, k), gen, _log_uniform((b,), gen, cfg.galaxy_faint_peak) * area.clamp(min=galaxy_area),
                          _uniform((b,), gen, *cfg.galaxy_slope), cfg.max_flux) * present
        which = torch.randint(stamps.shape[0], (b, k), generator=gen, device=dev)
        view = torch.randint(8, (b, k), generator=gen, device=dev)
        colour = _colours((b, k), cfg.channels, gen, cfg.colour_spread)
        centre = torch.randint(self.fine, (b, k, 2), generator=gen, device=dev)
        pixels = stamps[which[..., None], self.views[size_class][view]]  # (b, k, side * side)
        offsets = torch.arange(side, device=dev) - side // 2
        y = centre[..., 0, None, None] + offsets[:, None]  # (b, k, side, 1)
        x = centre[..., 1, None, None] + offsets[None, :]  # (b, k, 1, side)
        inside = ((y >= 0) & (y < self.fine) & (x >= 0) & (x < self.fine)).reshape(b, k, -1)
        y, x = y.clamp(0, self.fine - 1), x.clamp(0, self.fine - 1)
        image = torch.arange(b, device=dev)[:, None, None, None]
        weight = pixels * inside * flux[..., None]
        for ch in range(cfg.channels):
            index = self._flat_index(y, x, image, ch).reshape(-1)
            canvas.index_add_(0, index, (weight * colour[..., ch, None]).reshape(-1))

    def _field(self, b: int, gen: torch.Generator, index: torch.Tensor) -> torch.Tensor:
        """Gaussian random fields (b, n, n) with power spectrum k^-index, zero mean, unit variance."""
        n = self.fft_size
        amplitude = self.k[None].pow(-index[:, None, None] / 2)
        amplitude[:, 0, 0] = 0.0
        spectrum = torch.complex(torch.randn((b, n, n // 2 + 1), generator=gen, device=self.device),
                                 torch.randn((b, n, n // 2 + 1), generator=gen, device=self.device)) * amplitude
        field: torch.Tensor = torch.fft.irfft2(spectrum, s=(n, n))
        return (field - field.mean(dim=(1, 2), keepdim=True)) / field.std(dim=(1, 2), keepdim=True).clamp(min=1e-12)

    def _diffuse(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """Diffuse emission on the fine grid (b, C, n, n), per fine pixel; zero for most images' share."""
        cfg, n, dev = self.config, self.fft_size, self.device
        on = (_uniform((b,), gen) < cfg.diffuse_share).float()
        cloud = torch.exp(self._field(b, gen, _uniform((b,), gen, *cfg.diffuse_index)) * _uniform((b,), gen, 0.3, 1.5)
                          [:, None, None])
        ridges = torch.exp(-(self._field(b, gen, _uniform((b,), gen, 2.5, 3.5)) / _log_uniform((b,), gen, (0.03, 0.3))
                             [:, None, None]) ** 2) * cloud
        ramp = torch.linspace(0, 1, n, device=dev)
        angle = _uniform((b,), gen, 0, 2 * math.pi)
        gradient = (torch.cos(angle)[:, None, None] * ramp[None, :, None]
                    + torch.sin(angle)[:, None, None] * ramp[None, None, :])
        mix = _uniform((b, 3), gen) * torch.tensor([1.0, 0.7, 0.4], device=dev)
        mix = mix * (_uniform((b, 3), gen) < torch.tensor([0.9, 0.4, 0.3], device=dev))
        field = (mix[:, 0, None, None] * cloud / cloud.mean(dim=(1, 2), keepdim=True)
                 + mix[:, 1, None, None] * ridges / ridges.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12) * 3
                 + mix[:, 2, None, None] * (gradient - gradient.amin(dim=(1, 2), keepdim=True)))
        inner = field[:, : self.fine, : self.fine]
        span = (inner.amax(dim=(1, 2)) - inner.amin(dim=(1, 2))).clamp(min=1e-6)
        contrast = _log_uniform((b,), gen, cfg.diffuse_amplitude) * on / span / self.oversampling**2
        colour = _colours((b,), cfg.channels, gen, cfg.colour_spread)  # (b, C)
        return (field * contrast[:, None, None])[:, None] * colour[..., None, None]

    def _transmission(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """exp(-tau) of a foreground dark cloud (b, 1, n, n): tau a sigmoid of a smooth field, 1 where no cloud."""
        cfg = self.config
        field = self._field(b, gen, _uniform((b,), gen, 3.0, 4.5))
        edge = _log_uniform((b,), gen, (0.02, 0.5))[:, None, None]
        threshold = _uniform((b,), gen, -1.0, 1.0)[:, None, None]
        depth = _uniform((b,), gen, 0.5, 4.0) * (_uniform((b,), gen) < cfg.extinction_share)
        tau = depth[:, None, None] * torch.sigmoid((field - threshold) / edge)
        return torch.exp(-tau)[:, None]

    def _convolve_and_bin(self, fine: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Library PSF ``which`` per image by FFT, the frame cut from the margin, fine pixels summed to model pixels."""
        n, o = self.fft_size, self.oversampling
        blurred = torch.fft.irfft2(torch.fft.rfft2(fine) * self.psf_fft[which][:, None], s=(n, n))
        start = o * self.config.margin
        frame = blurred[..., start : start + o * self.config.resolution, start : start + o * self.config.resolution]
        return F.avg_pool2d(frame, o) * o * o

    def _saturate(self, signal: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = signal.shape[0]
        peak = signal.amax(dim=(1, 2, 3))
        level = peak * _log_uniform((b,), gen, (0.02, 0.5))
        saturate = (_uniform((b,), gen) < self.config.saturation_share) & (level > 30.0)
        level = torch.where(saturate, level, torch.full_like(level, math.inf))
        return torch.minimum(signal, level[:, None, None, None])

    def _noise(self, signal: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, r, _ = signal.shape
        white = torch.randn(signal.shape, generator=gen, device=self.device)
        width = _uniform((b,), gen, 0.5, 1.5)
        transfer = torch.exp(-2 * math.pi**2 * width[:, None, None] ** 2 * self.noise_k2[None])
        smooth = torch.fft.irfft2(torch.fft.rfft2(white) * transfer[:, None], s=(r, r))
        smooth = smooth / smooth.std(dim=(2, 3), keepdim=True).clamp(min=1e-12)
        correlated = (_uniform((b,), gen) < self.config.correlated_noise_share)[:, None, None, None]
        unit = torch.where(correlated, smooth, white)
        gain = _log_uniform((b,), gen, self.config.shot_noise)[:, None, None, None]
        return unit * torch.sqrt(1.0 + gain * signal.clamp(min=0.0))

    def normalize(self, physical: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The pipeline's normalization of each image and channel, with the run's stretch drawn per image."""
        b, c, r, _ = physical.shape
        stretch = torch.where(_uniform((b,), gen) < self.config.other_stretch_share,
                              torch.randint(1, len(STRETCHES), (b,), generator=gen, device=self.device),
                              torch.zeros(b, dtype=torch.long, device=self.device))
        unit = interval_unit(physical.reshape(b * c, r * r))
        stretched = apply_stretch(unit, stretch.repeat_interleave(c))
        return (stretched * 2.0 - 1.0).reshape(b, c, r, r).clamp_(-1.0, 1.0)


def sigma_clipped_median(values: torch.Tensor, sigma: float = 3.0, iterations: int = 5) -> torch.Tensor:
    """Per row: astropy's sigma_clipped_stats median (centre median, std, ``sigma``), for a fixed iteration count."""
    centre = values.median(dim=1).values
    keep = torch.ones_like(values, dtype=torch.bool)
    for _ in range(iterations):
        kept = torch.where(keep, values, torch.nan)
        centre = kept.nanmedian(dim=1).values
        count = keep.sum(dim=1).clamp(min=1)
        mean = torch.where(keep, values, 0.0).sum(dim=1) / count
        std = torch.sqrt((torch.where(keep, values - mean[:, None], 0.0) ** 2).sum(dim=1) / count)
        keep = (values - centre[:, None]).abs() <= sigma * std[:, None]
    return centre


def interval_unit(values: torch.Tensor) -> torch.Tensor:
    """Rows (N, P) -> [0, 1]: background subtracted, percentile interval of the pipeline, clipped."""
    excess = values - sigma_clipped_median(values)[:, None]
    q = torch.tensor([DEFAULT_LOWER_PERCENTILE / 100, DEFAULT_UPPER_PERCENTILE / 100], device=values.device,
                     dtype=values.dtype)
    low, high = torch.quantile(excess, q, dim=1)
    span = torch.where(high > low, high - low, excess.amax(dim=1) - excess.amin(dim=1)).clamp(min=1e-12)
    low = torch.where(high > low, low, excess.amin(dim=1))
    return ((excess - low[:, None]) / span[:, None]).clamp_(0.0, 1.0)


def apply_stretch(unit: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """astropy's AsinhStretch(0.1), SqrtStretch, LinearStretch, LogStretch(1000) per row (``which`` indexes
    :data:`STRETCHES`), with the pipeline's default parameters."""
    a_asinh = float(DEFAULT_STRETCH_PARAMS["asinh"] or 0.1)
    a_log = float(DEFAULT_STRETCH_PARAMS["log"] or 1000.0)
    options = torch.stack([
        torch.asinh(unit / a_asinh) / math.asinh(1 / a_asinh),
        torch.sqrt(unit),
        unit,
        torch.log(a_log * unit + 1.0) / math.log(a_log + 1.0),
    ])
    return options.gather(0, which[None, :, None].expand(1, *unit.shape))[0]


def _fft_size(minimum: int) -> int:
    """The smallest 2^a 3^b (b <= 2) at least ``minimum``: a fast FFT length."""
    return min(int(size) for size in ((1 << a) * 3**b for a in range(1, 24) for b in range(3)) if size >= minimum)


def _psf_transforms(library: SkyLibrary, n: int, device: torch.device) -> torch.Tensor:
    """rfft2 of every library PSF, zero-padded to n x n with its centre pixel at (0, 0): no shift on convolving."""
    psfs = torch.from_numpy(library.psfs)
    half = psfs.shape[1] // 2
    padded = torch.zeros(psfs.shape[0], n, n)
    padded[:, : psfs.shape[1], : psfs.shape[2]] = psfs
    padded = torch.roll(padded, shifts=(-half, -half), dims=(1, 2))
    transform: torch.Tensor = torch.fft.rfft2(padded)
    return transform.to(device)


def _dihedral_views(side: int, device: torch.device) -> torch.Tensor:
    """(8, side * side) gather indices of a flattened square stamp under the eight flips and quarter turns."""
    grid = torch.arange(side * side).reshape(side, side)
    views = [torch.rot90(g, k) for g in (grid, grid.flip(1)) for k in range(4)]
    return torch.stack([v.reshape(-1) for v in views]).to(device)
