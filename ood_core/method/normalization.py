"""Reversible normalization of physical FITS images into the model's [-1, 1] space (DESIGN section 4).

Forward mapping, every step from astropy:

1. subtract the background: sigma-clipped median (``astropy.stats.sigma_clipped_stats``);
2. interval: ``[vmin, vmax]`` of the background-subtracted pixels from ``AsymmetricPercentileInterval``
   (default 0.5 and 99.8 percent) mapped linearly to [0, 1]. Values outside are **clipped**: the fitted
   fraction of clipped pixels is recorded in the parameters (about 0.7 % by construction); they cannot be
   recovered by the inverse, which returns vmin or vmax for them;
3. stretch: ``AsinhStretch`` (default, a = 0.1), ``LogStretch`` (a = 1000), ``SqrtStretch`` or
   ``LinearStretch``, each of which has an exact ``inverse``;
4. x = 2 y - 1.

NaN (invalid) pixels are filled with the background, i.e. zero physical excess, before the mapping; the
mask travels separately. ``denormalize`` inverts steps 4..1 exactly (float64 internally).

One :class:`NormalizationParams` is fitted per run over all inputs (``per_run``, default) so a sample has
one unambiguous inverse; ``per_image`` fits each input on its own for heterogeneous inputs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from astropy.nddata import block_reduce
from astropy.stats import sigma_clipped_stats
from astropy.visualization import (
    AsinhStretch,
    AsymmetricPercentileInterval,
    BaseStretch,
    LinearStretch,
    LogStretch,
    ManualInterval,
    SqrtStretch,
)

from ood_core.errors import ConfigurationError, ImageTooSmallError
from ood_core.io.bands import BandGroup
from ood_core.io.fits import FitsImage
from ood_core.method.counts_domain import NOT_CHECKED, CountsDomain, counts_domain
from ood_core.method.resampling import (
    Resampling,
    ResamplingRule,
    ResamplingSetting,
    block_resample,
    choose_resampling,
)

log = logging.getLogger(__name__)

StretchName = Literal["asinh", "linear", "log", "sqrt"]
NormalizationMode = Literal["per_run", "per_image"]

DEFAULT_LOWER_PERCENTILE = 0.5
DEFAULT_UPPER_PERCENTILE = 99.8
DEFAULT_STRETCH_PARAMS: dict[str, float | None] = {"asinh": 0.1, "log": 1000.0, "sqrt": None, "linear": None}
"""Stretch parameter used when none is given: asinh ``a`` (linear below ~a), log ``a`` (astropy's default)."""

MAX_FIT_PIXELS = 1 << 22
"""Above this many valid pixels the fit uses an evenly strided subset (deterministic) to stay fast."""


def _make_stretch(name: str, param: float | None) -> BaseStretch:
    factories: dict[str, Callable[[], BaseStretch]] = {
        "asinh": lambda: AsinhStretch(a=param),
        "log": lambda: LogStretch(a=param),
        "sqrt": SqrtStretch,
        "linear": LinearStretch,
    }
    if name not in factories:
        choices = ", ".join(get_args(StretchName))
        raise ConfigurationError(f"unknown stretch {name!r}; choose one of {choices}")
    return factories[name]()


@dataclass(frozen=True)
class NormalizationParams:
    """Everything needed to map physical values to model space and back; JSON-safe via ``to_dict``."""

    background: float
    """Sigma-clipped median of the valid pixels, in ``units``."""
    vmin: float
    """Lower interval limit of the background-subtracted data (maps to x = -1)."""
    vmax: float
    """Upper interval limit of the background-subtracted data (maps to x = +1)."""
    stretch: StretchName = "asinh"
    stretch_param: float | None = 0.1
    units: str = ""
    mode: NormalizationMode = "per_run"
    lower_percentile: float = DEFAULT_LOWER_PERCENTILE
    upper_percentile: float = DEFAULT_UPPER_PERCENTILE
    sigma: float = 3.0
    """Clipping threshold of the background estimate, in standard deviations."""
    clipped_fraction: float = 0.0
    """Fraction of the fitted valid pixels outside [vmin, vmax] (not recoverable by the inverse)."""
    resampling: ResamplingRule = "mean"
    """How the fitted values were made from input blocks (:mod:`ood_core.method.resampling`): block sums
    ("sum", per-pixel units) or means ("mean"); ``denormalize`` gives values of the same kind, in ``units`` per
    model pixel. Records of runs from before the rule was recorded read as "mean"."""

    def __post_init__(self) -> None:
        if not self.vmax > self.vmin:
            raise ConfigurationError(f"normalization needs vmax > vmin, got {self.vmin}, {self.vmax}")
        _make_stretch(self.stretch, self.stretch_param)  # fails early on an unknown stretch

    def stretch_transform(self) -> BaseStretch:
        return _make_stretch(self.stretch, self.stretch_param)

    def to_dict(self) -> dict[str, Any]:
        return {key: (float(v) if isinstance(v, np.floating) else v) for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NormalizationParams:
        known = {key: values[key] for key in cls.__dataclass_fields__ if key in values}
        return cls(**known)


def _valid_values(images: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float64]:
    pooled = np.concatenate([np.asarray(image, dtype=np.float64).ravel() for image in images])
    values: npt.NDArray[np.float64] = pooled[np.isfinite(pooled)]
    if values.size > MAX_FIT_PIXELS:
        values = values[:: int(np.ceil(values.size / MAX_FIT_PIXELS))]
    return values


def fit_normalization(
    images: Sequence[npt.ArrayLike],
    *,
    stretch: StretchName = "asinh",
    stretch_param: float | None = None,
    lower_percentile: float = DEFAULT_LOWER_PERCENTILE,
    upper_percentile: float = DEFAULT_UPPER_PERCENTILE,
    sigma: float = 3.0,
    units: str = "",
    mode: NormalizationMode = "per_run",
    resampling: ResamplingRule = "mean",
) -> NormalizationParams:
    """Fit one normalization jointly on all valid (finite) pixels of ``images``.

    ``stretch_param`` None takes the stretch's default from :data:`DEFAULT_STRETCH_PARAMS`.
    """
    if not images:
        raise ConfigurationError("fit_normalization needs at least one image")
    if not 0 <= lower_percentile < upper_percentile <= 100:
        raise ConfigurationError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower_percentile}, {upper_percentile}"
        )
    param = DEFAULT_STRETCH_PARAMS.get(stretch) if stretch_param is None else float(stretch_param)
    _make_stretch(stretch, param)
    values = _valid_values(images)
    if values.size == 0:
        raise ConfigurationError("cannot fit a normalization: no finite pixel in the images")
    _, median, _ = sigma_clipped_stats(values, sigma=sigma, maxiters=10)
    background = float(median)
    excess = values - background
    interval = AsymmetricPercentileInterval(lower_percentile, upper_percentile)
    vmin, vmax = (float(v) for v in interval.get_limits(excess))
    if not vmax > vmin:
        # Percentiles can coincide when most pixels share one value; fall back to the full range.
        vmin, vmax = float(excess.min()), float(excess.max())
    if not vmax > vmin:
        raise ConfigurationError(f"cannot fit a normalization: all pixels have the value {values[0]}")
    clipped = float(np.mean((excess < vmin) | (excess > vmax)))
    return NormalizationParams(
        background=background,
        vmin=vmin,
        vmax=vmax,
        stretch=stretch,
        stretch_param=param,
        units=units,
        mode=mode,
        lower_percentile=float(lower_percentile),
        upper_percentile=float(upper_percentile),
        sigma=float(sigma),
        clipped_fraction=clipped,
        resampling=resampling,
    )


def fit_per_image(
    images: Sequence[npt.ArrayLike],
    *,
    stretch: StretchName = "asinh",
    stretch_param: float | None = None,
    lower_percentile: float = DEFAULT_LOWER_PERCENTILE,
    upper_percentile: float = DEFAULT_UPPER_PERCENTILE,
    sigma: float = 3.0,
    units: Sequence[str] | None = None,
    resampling: ResamplingRule = "mean",
) -> list[NormalizationParams]:
    """One normalization per image (``mode="per_image"``); ``units`` gives each image's BUNIT."""
    unit_list = list(units) if units is not None else [""] * len(images)
    if len(unit_list) != len(images):
        raise ConfigurationError(f"got {len(unit_list)} units for {len(images)} images")
    return [
        fit_normalization(
            [image], stretch=stretch, stretch_param=stretch_param, lower_percentile=lower_percentile,
            upper_percentile=upper_percentile, sigma=sigma, units=unit, mode="per_image", resampling=resampling,
        )
        for image, unit in zip(images, unit_list, strict=True)
    ]


def normalize(data: npt.ArrayLike, params: NormalizationParams) -> npt.NDArray[np.float32]:
    """Physical values -> model space [-1, 1]; NaN becomes the background (zero excess), outliers clip."""
    values = np.asarray(data, dtype=np.float64)
    excess = np.where(np.isfinite(values), values - params.background, 0.0)
    unit = ManualInterval(params.vmin, params.vmax)(excess, clip=True)
    stretched = params.stretch_transform()(unit, clip=True)
    return np.asarray(2.0 * stretched - 1.0, dtype=np.float32)


_CHUNK_VALUES = 1 << 16
"""Values per pass of :func:`denormalize` (its float64 temporaries stay in cache; elementwise, so the same bits)."""


def denormalize(x: npt.ArrayLike, params: NormalizationParams) -> npt.NDArray[np.float32]:
    """Model space -> physical values; x outside [-1, 1] is clipped first (stretches live on [0, 1])."""
    values = np.asarray(x)
    out = np.empty(values.shape, dtype=np.float32)
    flat, flat_out = values.reshape(-1), out.reshape(-1)
    inverse = params.stretch_transform().inverse
    for start in range(0, flat.size, _CHUNK_VALUES):
        part = slice(start, start + _CHUNK_VALUES)
        stretched = np.clip((flat[part].astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
        unit = inverse(stretched, clip=True)
        flat_out[part] = unit * (params.vmax - params.vmin) + params.vmin + params.background
    return out


def clipped_fraction(data: npt.ArrayLike, params: NormalizationParams) -> float:
    """Fraction of the finite pixels of ``data`` that ``normalize`` clips (outside [vmin, vmax])."""
    values = np.asarray(data, dtype=np.float64)
    excess = values[np.isfinite(values)] - params.background
    if excess.size == 0:
        return 0.0
    return float(np.mean((excess < params.vmin) | (excess > params.vmax)))


# ---------------------------------------------------------------------------------------------------------
# Geometry: resize to the model resolution, bands <-> channels


def square_crop_box(shape: tuple[int, int], resolution: int) -> tuple[int, int, int]:
    """(y0, x0, side) of the centred square crop whose side is the largest multiple of ``resolution``."""
    height, width = shape
    side = min(height, width) // resolution * resolution
    return (height - side) // 2, (width - side) // 2, side


def resize_to_resolution(
    data: npt.ArrayLike,
    mask: npt.ArrayLike,
    resolution: int,
    *,
    path: str = "<array>",
    rule: ResamplingRule = "mean",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Bring an image to ``resolution`` x ``resolution`` by centre-cropping and block averaging or summing.

    Non-square images are centre-cropped to a square, then to the largest multiple of ``resolution``;
    the square is then reduced block by block (``astropy.nddata.block_reduce``) by ``rule``: "mean", a
    NaN-aware mean, conserves surface brightness (flux per unit area); "sum", the NaN-aware mean times the
    block area, conserves the total flux of per-pixel quantities (counts); see
    :mod:`ood_core.method.resampling`. A block is masked only when every pixel in it is invalid. Never
    upsamples: raises :class:`ImageTooSmallError` when the image is smaller than ``resolution``.
    """
    values = np.asarray(data, dtype=np.float32)
    given_mask = np.asarray(mask, dtype=bool)
    if values.ndim != 2 or given_mask.shape != values.shape:
        shapes = f"{values.shape} and {given_mask.shape}"
        raise ConfigurationError(f"resize needs 2-D data and a mask of the same shape, got {shapes}")
    invalid = given_mask | ~np.isfinite(values)
    height, width = values.shape
    if min(height, width) < resolution:
        raise ImageTooSmallError(
            path, f"image is {height}x{width}, smaller than the model resolution {resolution}"
        )
    y0, x0, side = square_crop_box((height, width), resolution)
    crop = values[y0 : y0 + side, x0 : x0 + side]
    crop_mask = invalid[y0 : y0 + side, x0 : x0 + side]
    factor = side // resolution
    if factor == 1:
        out = np.where(crop_mask, np.float32(np.nan), crop).astype(np.float32)
        return out, crop_mask.copy()
    reduced = block_resample(np.where(crop_mask, np.nan, crop.astype(np.float64)), factor, rule)
    reduced_mask = np.asarray(block_reduce(crop_mask, factor, func=np.all), dtype=bool)
    out = np.asarray(reduced, dtype=np.float32)
    out[reduced_mask] = np.nan
    return out, reduced_mask


def bands_to_channels(x: npt.ArrayLike, channels: int) -> npt.NDArray[np.float32]:
    """(N, H, W) single-band images -> (N, C, H, W) by replicating the band into every channel."""
    values = np.asarray(x, dtype=np.float32)
    if values.ndim != 3:
        raise ConfigurationError(f"bands_to_channels expects (N, H, W), got shape {values.shape}")
    if channels < 1:
        raise ConfigurationError(f"channels must be >= 1, got {channels}")
    return np.repeat(values[:, None], channels, axis=1)


def channels_to_band(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(N, C, H, W) model images -> (N, H, W) by averaging the channels."""
    values = np.asarray(x, dtype=np.float32)
    if values.ndim != 4:
        raise ConfigurationError(f"channels_to_band expects (N, C, H, W), got shape {values.shape}")
    if values.shape[1] == 1:  # the mean of one value is that value, bit for bit
        return values[:, 0].copy()
    return np.asarray(values.mean(axis=1, dtype=np.float64), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# A whole batch


@dataclass
class NormalizedBatch:
    """Model-ready inputs with what is needed to go back to physical units."""

    images: npt.NDArray[np.float32]
    """(N, C, H, W) in [-1, 1]."""
    mask: npt.NDArray[np.bool_]
    """(N, H, W), True where the resized pixel was invalid (filled with the background before mapping)."""
    params: list[NormalizationParams]
    """One shared entry (per_run) or one per image (per_image)."""
    sources: list[dict[str, Any]]
    """Per image: ``FitsImage.metadata()`` plus the crop, the block factor and the resampling record
    (``{"rule", "factor", "reason", "setting"}``; band groups: a list of them, one per band) used to resize it."""
    per_band: bool = False
    """True for band groups: ``params`` holds one per-run entry per band (channel), not one per image."""
    resampling: list[Resampling] = field(default_factory=list)
    """The resampling rule of the batch: one entry, or one per band for band groups."""
    counts: CountsDomain = NOT_CHECKED
    """Whether the inputs are photon counts (:mod:`ood_core.method.counts_domain`), decided on the resized planes."""

    def params_for(self, index: int) -> NormalizationParams:
        """The normalization that applies to input ``index`` (single-band batches)."""
        if self.per_band:
            raise ConfigurationError("a band-group batch has one normalization per band, not per input")
        return self.params[0] if len(self.params) == 1 else self.params[index]


def _common_units(images: Sequence[FitsImage]) -> str:
    units = sorted({str(image.header.get("BUNIT", "")).strip() for image in images})
    if len(units) == 1:
        return units[0]
    log.warning("inputs have different BUNIT values %s; one per-run normalization mixes them", units)
    return "mixed (" + "; ".join(u or "none" for u in units) + ")"


def _cd_matrix_deg(image: FitsImage) -> list[list[float]] | None:
    """The input's celestial pixel-scale matrix (CD, degrees per input pixel), None without a celestial WCS."""
    if image.wcs is None or not image.wcs.has_celestial:
        return None
    matrix = np.asarray(image.wcs.celestial.pixel_scale_matrix, dtype=np.float64)
    if matrix.shape != (2, 2) or not np.isfinite(matrix).all() or not np.any(matrix):
        return None
    return [[float(v) for v in row] for row in matrix]


def _bunit(image: FitsImage) -> str:
    return str(image.header.get("BUNIT", "")).strip()


def choose_rule(images: Sequence[FitsImage], setting: ResamplingSetting, *, what: str = "inputs") -> Resampling:
    """The resampling rule of ``images`` (one band) under ``setting``, logged with its reason."""
    chosen = choose_resampling([(im.path, _bunit(im)) for im in images], setting, what=what)
    log.info("resampling of the %s: block %s (%s)", what, chosen.rule, chosen.reason)
    return chosen


def _source(image: FitsImage, resolution: int, resampling: Resampling) -> dict[str, Any]:
    y0, x0, side = square_crop_box(image.shape, resolution)
    return {**image.metadata(), "crop": {"y0": y0, "x0": x0, "side": side}, "block": side // resolution,
            "resampling": resampling.record(side // resolution), "cd_matrix_deg": _cd_matrix_deg(image)}


def prepare_batch(
    images: Sequence[FitsImage],
    *,
    resolution: int,
    channels: int,
    mode: NormalizationMode = "per_run",
    stretch: StretchName = "asinh",
    stretch_param: float | None = None,
    lower_percentile: float = DEFAULT_LOWER_PERCENTILE,
    upper_percentile: float = DEFAULT_UPPER_PERCENTILE,
    resampling: ResamplingSetting = "auto",
) -> NormalizedBatch:
    """Resize each image to the model resolution (blocks summed or averaged by the units, or as ``resampling``
    forces: :mod:`ood_core.method.resampling`), fit on the resized pixels, map to [-1, 1] channels."""
    if not images:
        raise ConfigurationError("prepare_batch needs at least one image")
    if mode not in get_args(NormalizationMode):
        raise ConfigurationError(f"unknown normalization mode {mode!r}; choose per_run or per_image")
    chosen = choose_rule(images, resampling)
    resized = [resize_to_resolution(im.data, im.mask, resolution, path=im.path, rule=chosen.rule) for im in images]
    planes = [data for data, _ in resized]
    fit_options: dict[str, Any] = {
        "stretch": stretch, "stretch_param": stretch_param,
        "lower_percentile": lower_percentile, "upper_percentile": upper_percentile, "resampling": chosen.rule,
    }
    if mode == "per_run":
        params = [fit_normalization(planes, units=_common_units(images), mode="per_run", **fit_options)]
    else:
        params = fit_per_image(planes, units=[_bunit(im) for im in images], **fit_options)
    normalized = np.stack(
        [normalize(plane, params[0] if mode == "per_run" else params[i]) for i, plane in enumerate(planes)]
    )
    return NormalizedBatch(
        images=bands_to_channels(normalized, channels),
        mask=np.stack([mask for _, mask in resized]),
        params=params,
        sources=[_source(image, resolution, chosen) for image in images],
        resampling=[chosen],
        counts=counts_domain(planes, [_bunit(im) for im in images]),
    )


def _group_source(group: BandGroup, resolution: int, rules: Sequence[Resampling]) -> dict[str, Any]:
    """Provenance of one band group: the first band's metadata, the group's path and hash, the band map, the
    resampling of each band (a list in channel order)."""
    first = group.bands[0]
    digest = hashlib.sha256("+".join(band.sha256 for band in group.bands).encode()).hexdigest()
    source = _source(first, resolution, rules[0])
    return {**source, "path": group.path, "sha256": digest, "bands": group.band_map(),
            "resampling": [rule.record(source["block"]) for rule in rules]}


def prepare_band_batch(
    groups: Sequence[BandGroup],
    *,
    resolution: int,
    stretch: StretchName = "asinh",
    stretch_param: float | None = None,
    lower_percentile: float = DEFAULT_LOWER_PERCENTILE,
    upper_percentile: float = DEFAULT_UPPER_PERCENTILE,
    resampling: ResamplingSetting = "auto",
) -> NormalizedBatch:
    """Band groups -> (N, B, H, W) model images: band k in channel k, each band resampled by its own units
    (summed or averaged, or as ``resampling`` forces) and normalized on its own over all the groups (one
    per-run fit per band), mask = invalid in any band."""
    if not groups:
        raise ConfigurationError("prepare_band_batch needs at least one band group")
    count = len(groups[0].bands)
    if any(len(group.bands) != count for group in groups):
        raise ConfigurationError(f"every band group needs the same number of bands ({count})")
    names = groups[0].names
    rules = [choose_rule([g.bands[k] for g in groups], resampling, what=f"files of band {k} ({names[k]})")
             for k in range(count)]
    resized = [[resize_to_resolution(b.data, b.mask, resolution, path=b.path, rule=rules[k].rule)
                for k, b in enumerate(g.bands)] for g in groups]
    params = [
        fit_normalization([planes[k][0] for planes in resized], units=_common_units([g.bands[k] for g in groups]),
                          mode="per_run", stretch=stretch, stretch_param=stretch_param,
                          lower_percentile=lower_percentile, upper_percentile=upper_percentile,
                          resampling=rules[k].rule)
        for k in range(count)
    ]
    images = np.stack([np.stack([normalize(planes[k][0], params[k]) for k in range(count)]) for planes in resized])
    mask = np.stack([np.logical_or.reduce([planes[k][1] for k in range(count)]) for planes in resized])
    return NormalizedBatch(images=images.astype(np.float32), mask=mask, params=params,
                           sources=[_group_source(g, resolution, rules) for g in groups], per_band=True,
                           resampling=rules)


def bands_to_physical(model_images: npt.ArrayLike, params: Sequence[NormalizationParams]) -> npt.NDArray[np.float32]:
    """Model-space (N, B, H, W) of a band-group run -> physical (N, B, H, W), band k through ``params[k]``."""
    values = np.asarray(model_images, dtype=np.float32)
    if values.ndim != 4 or values.shape[1] != len(params):
        raise ConfigurationError(f"expected (N, {len(params)}, H, W) for {len(params)} bands, got {values.shape}")
    return np.stack([denormalize(values[:, k], p) for k, p in enumerate(params)], axis=1).astype(np.float32)


def model_to_physical(
    model_images: npt.ArrayLike, params: Sequence[NormalizationParams], parents: npt.ArrayLike | None = None,
    *, per_band: bool = False,
) -> npt.NDArray[np.float32]:
    """Model-space (N, C, H, W) -> physical (N, H, W): one parameter set per run, or each image's parent's;
    ``per_band`` (band-group runs): physical (N, B, H, W), one parameter set per band."""
    if per_band:
        return bands_to_physical(model_images, params)
    band = channels_to_band(np.asarray(model_images))
    if len(params) == 1:
        return denormalize(band, params[0])
    if parents is None:
        raise ConfigurationError("per-image normalization needs each image's parent input")
    index = np.asarray(parents, dtype=np.int64)
    if index.shape != (band.shape[0],):
        raise ConfigurationError(f"need one parent per image: {index.shape[0]} for {band.shape[0]} images")
    out = np.empty(band.shape, dtype=np.float32)
    for owner in np.unique(index):  # each parameter set once over all of its images (elementwise: the same bits)
        mine = index == owner
        out[mine] = denormalize(band[mine], params[int(owner)])
    return out
