"""FITS reading with validation, batch reading with quarantine, and tiling into cutouts.

Every file is read fully into memory once: its bytes give the sha256 and astropy parses them from a
buffer, so no file handle or memory map outlives the call. A file that cannot be used raises a specific
:class:`~ood_core.errors.InvalidInputError` subclass whose message names the file and says why; raw
astropy or OS exceptions never escape for a bad file.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from ood_core.errors import (
    CorruptFitsError,
    EmptyImageError,
    ImageTooSmallError,
    InvalidInputError,
    MissingInputError,
    NoImageHDUError,
    QuarantinedInput,
    WrongDimensionError,
)
from ood_core.io.fits_bytes import (
    IMAGE_HDU_TYPES,
    check_fits_start,
    check_not_truncated,
    decompress,
    hdu_listing,
    read_bytes,
    too_large,
    unreadable,
)

log = logging.getLogger(__name__)

FITS_SUFFIXES: tuple[str, ...] = (".fits", ".fit", ".fts", ".fits.gz", ".fits.fz")
"""File endings picked up when a directory is given as input."""

CubePlane = int | Literal["moment0"]

DEFAULT_MAX_PIXELS = 2**25
"""Largest image read by default: 33.5 million pixels (e.g. 5792 x 5792), about 0.5 GB of memory to read.
Larger images are refused with :class:`ImageTooLargeError` before their data are decoded; the environment
variable ``OOD_MAX_PIXELS`` (or the ``max_pixels`` argument) sets another limit."""

MOSTLY_INVALID_FRACTION = 0.5
"""An image with more invalid (NaN, inf, BLANK) pixels than this fraction is kept with a warning."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)

_METADATA_KEYS = ("BUNIT", "TELESCOP", "INSTRUME", "FILTER", "OBJECT")


@dataclass(frozen=True, eq=False)
class FitsImage:
    """One 2-D image read from a FITS file (or a plane/moment of a cube, or a cutout of either)."""

    path: str
    data: npt.NDArray[np.float32]
    """2-D, physical units (BSCALE/BZERO applied), NaN where invalid."""
    mask: npt.NDArray[np.bool_]
    """True where the pixel is invalid (NaN, inf, BLANK)."""
    header: fits.Header
    """The original header of the HDU (for a cube it still describes the cube)."""
    wcs: WCS | None
    """Celestial 2-D WCS of ``data`` when the header has one."""
    hdu_index: int
    sha256: str
    """Of the file's bytes as stored on disk."""
    plane: str | None = None
    """2-D view of the HDU: "plane=12", "moment0", "cutout y0=128 x0=256"; None for a whole 2-D image."""
    warnings: tuple[str, ...] = ()
    """What a person should know about an image that was kept (mostly NaN, values beyond float32)."""

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    def metadata(self) -> dict[str, Any]:
        """JSON-safe description for provenance: file, hash, HDU, shape, plane and a few header keywords."""
        meta: dict[str, Any] = {
            "path": self.path,
            "sha256": self.sha256,
            "hdu": self.hdu_index,
            "shape": list(self.shape),
        }
        for key in _METADATA_KEYS:
            value = self.header.get(key)
            meta[key] = None if value is None else str(value).strip()
        meta["plane"] = self.plane
        meta["warnings"] = list(self.warnings)
        return meta


# ---------------------------------------------------------------------------------------------------------
# Input expansion


def _is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def _has_fits_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in FITS_SUFFIXES)


def _expand_one(spec: str) -> list[Path]:
    # An existing path is a path, whatever its characters (``cut[1].fits``, ``obs[2]/``); only a path that
    # does not exist may be a glob pattern.
    path = Path(spec)
    if path.is_dir():
        return [p for p in path.iterdir() if p.is_file() and _has_fits_suffix(p)]
    if path.exists():
        return [path]
    if _is_glob(spec):
        matches = [Path(m) for m in glob.glob(spec, recursive=True)]
        return [p for p in matches if p.is_file()]
    return []


def expand_inputs(specs: Sequence[str | Path]) -> list[Path]:
    """Files, directories (their FITS files, not recursive) and glob patterns -> unique file paths, in the
    order the user gave the specs (the files of one directory or pattern sorted by name; a file met twice is
    kept where it first appears), so the run stores its inputs in that order.

    A spec that exists is taken as a path even when it holds glob characters (``cut[1].fits``); only a spec
    that names no existing file or directory is expanded as a pattern.

    Specs that match nothing are left out rather than raised, so one typo does not stop a run;
    :func:`unmatched_inputs` turns them into quarantine entries for the caller to report. A file named
    explicitly is kept whatever its ending (reading it decides whether it is FITS); a directory contributes
    only files ending in one of :data:`FITS_SUFFIXES`.
    """
    found: dict[Path, None] = {}  # insertion-ordered set
    for spec in specs:
        for path in sorted(_expand_one(str(spec))):
            found.setdefault(path, None)
    return list(found)


def unmatched_inputs(specs: Sequence[str | Path]) -> list[QuarantinedInput]:
    """One quarantine entry per spec that names no file: missing path, empty directory, empty glob."""
    out: list[QuarantinedInput] = []
    for spec in map(str, specs):
        if _expand_one(spec):
            continue
        if Path(spec).is_dir():
            reason = f"directory holds no FITS file ({', '.join(FITS_SUFFIXES)})"
        elif _is_glob(spec):
            reason = "no file matches this pattern"
        else:
            reason = "no such file or directory"
        out.append(QuarantinedInput(path=spec, reason=reason, error=MissingInputError.__name__))
    return out


# ---------------------------------------------------------------------------------------------------------
# Reading one file


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The image size limit in force: ``max_pixels``, else ``$OOD_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    if max_pixels is not None:
        return int(max_pixels)
    value = os.environ.get("OOD_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError:
        log.warning("OOD_MAX_PIXELS=%r is not an integer; the limit stays %d pixels", value, DEFAULT_MAX_PIXELS)
        return DEFAULT_MAX_PIXELS


def _has_data(hdu: Any) -> bool:
    shape = hdu.shape
    return bool(shape) and 0 not in shape


def _select_hdu(path: str, hdul: fits.HDUList, hdu: int | str | None) -> int:
    if hdu is None:
        for index, candidate in enumerate(hdul):
            if isinstance(candidate, IMAGE_HDU_TYPES) and _has_data(candidate):
                return index
        raise NoImageHDUError(path, f"no image HDU (HDUs: {hdu_listing(hdul)})")
    try:
        index = int(hdul.index_of(hdu))
    except (KeyError, IndexError) as exc:
        raise NoImageHDUError(path, f"no HDU {hdu!r} (HDUs: {hdu_listing(hdul)})") from exc
    if not 0 <= index < len(hdul):
        raise NoImageHDUError(path, f"no HDU {hdu!r} (HDUs: {hdu_listing(hdul)})")
    chosen = hdul[index]
    if not isinstance(chosen, IMAGE_HDU_TYPES):
        raise NoImageHDUError(path, f"HDU {hdu!r} is not an image (HDUs: {hdu_listing(hdul)})")
    if not _has_data(chosen):
        raise EmptyImageError(path, f"HDU {hdu!r} has no data (HDUs: {hdu_listing(hdul)})")
    return index


def _check_size(path: str, hdu: Any, max_pixels: int) -> None:
    """Refuse an image above the pixel limit before its data are decoded."""
    shape = tuple(int(n) for n in hdu.shape)
    pixels = int(np.prod(shape, dtype=np.int64))
    if pixels > max_pixels:
        raise too_large(path, f"image is {'x'.join(map(str, shape))} = {pixels} pixels", max_pixels)


def _physical_pixels(path: str, hdu: Any) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Data as float32 in physical units, NaN where invalid (NaN, inf, BLANK), and warnings about them."""
    raw = np.asarray(hdu.data)  # decoder errors (zlib, cfitsio, numpy) are turned into reasons by the caller
    invalid = np.zeros(raw.shape, dtype=bool)
    blank = hdu.header.get("BLANK")
    if np.issubdtype(raw.dtype, np.integer) and isinstance(blank, int):
        # astropy turns BLANK into NaN only when it scales to float; unscaled integers keep the BLANK value.
        bscale = float(hdu.header.get("BSCALE", 1.0))
        bzero = float(hdu.header.get("BZERO", 0.0))
        invalid |= raw == blank * bscale + bzero
    with np.errstate(over="ignore", invalid="ignore"):
        data = raw.astype(np.float32)
    notes = []
    if raw.dtype.kind == "f" and raw.dtype.itemsize > 4:
        beyond = int(np.count_nonzero(np.isfinite(raw) & ~np.isfinite(data)))
        if beyond:
            notes.append(f"{beyond} pixel(s) beyond the float32 range (|value| > {_FLOAT32_MAX:.3g}) are masked")
    invalid |= ~np.isfinite(data)
    data[invalid] = np.nan
    return data, notes


def _to_image(
    path: str, data: npt.NDArray[np.float32], cube_plane: CubePlane
) -> tuple[npt.NDArray[np.float32], str | None]:
    """Reduce the HDU's array to 2-D: squeeze degenerate axes, pick a cube plane or the moment 0."""
    original = "x".join(str(n) for n in data.shape)
    squeezed = data.squeeze()
    if squeezed.ndim < 2:
        reason = f"{max(squeezed.ndim, 1)}-D data (shape {original}), expected a 2-D image"
        raise WrongDimensionError(path, reason)
    if squeezed.ndim > 3:
        raise WrongDimensionError(
            path, f"{squeezed.ndim}-D data (shape {original}), expected a 2-D image or a 3-D cube"
        )
    if squeezed.ndim == 2:
        return squeezed, None
    n_planes = squeezed.shape[0]
    if cube_plane == "moment0":
        # Channel sum ignoring NaN; a pixel NaN in every plane stays NaN instead of becoming 0.
        all_invalid = np.all(np.isnan(squeezed), axis=0)
        channel_sum = np.nansum(squeezed, axis=0, dtype=np.float64)
        moment0: npt.NDArray[np.float32] = np.asarray(channel_sum, dtype=np.float32)
        moment0[all_invalid] = np.nan
        return moment0, "moment0"
    if not 0 <= cube_plane < n_planes:
        raise WrongDimensionError(
            path, f"cube has {n_planes} planes (0..{n_planes - 1}); plane {cube_plane} does not exist"
        )
    return np.ascontiguousarray(squeezed[cube_plane]), f"plane={cube_plane}"


def _celestial_wcs(path: str, header: fits.Header) -> WCS | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            full = WCS(header)
            if not full.has_celestial:
                return None
            celestial = full.celestial
    except Exception as exc:  # astropy.wcs raises many unrelated types for bad keywords
        log.warning("%s: WCS ignored, header keywords unusable (%s)", path, exc)
        return None
    return celestial if celestial.naxis == 2 else None


def _validate_content(
    path: str, data: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], min_size: int
) -> None:
    height, width = data.shape
    if data.size == 0:
        raise EmptyImageError(path, f"image has zero size ({height}x{width})")
    if mask.all():
        raise EmptyImageError(path, "all pixels are NaN or blank")
    valid = data[~mask]
    low, high = float(valid.min()), float(valid.max())
    if low == high:
        raise EmptyImageError(path, f"image is constant (value {low})")
    if min(height, width) < min_size:
        raise ImageTooSmallError(
            path, f"image is {height}x{width}, smaller than the required {min_size} pixels per side"
        )


def _datasum_failures(caught: list[warnings.WarningMessage]) -> list[str]:
    """astropy's DATASUM failures among the warnings recorded while opening with ``checksum=True``."""
    return [str(w.message).strip() for w in caught if "Datasum verification failed" in str(w.message)]


def _content_warnings(mask: npt.NDArray[np.bool_]) -> list[str]:
    fraction = float(mask.mean())
    if fraction > MOSTLY_INVALID_FRACTION:
        return [f"{fraction:.0%} of the pixels are NaN, inf or BLANK (masked)"]
    return []


def _decode(
    name: str, content: bytes | bytearray, hdu: int | str | None, max_pixels: int
) -> tuple[int, fits.Header, npt.NDArray[np.float32], list[str]]:
    """Parse ``content``, pick the HDU and decode its data: (index, header, data, warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        # Truncation, header and checksum problems become our own errors; astropy's warnings are recorded.
        warnings.simplefilter("always")
        decoding = False
        try:
            with fits.open(io.BytesIO(content), memmap=False, lazy_load_hdus=False, checksum=True) as hdul:
                failures = _datasum_failures(caught)
                if failures:
                    raise CorruptFitsError(name, f"data do not match their DATASUM: {'; '.join(failures)}")
                check_not_truncated(name, hdul, content)
                index = _select_hdu(name, hdul, hdu)
                chosen = hdul[index]
                _check_size(name, chosen, max_pixels)
                header = chosen.header.copy()
                decoding = True
                cube, notes = _physical_pixels(name, chosen)
        except InvalidInputError:
            raise
        except Exception as exc:  # any reader error is a reason to quarantine, never a crash of the run
            raise unreadable(name, content, exc, decoding) from exc
    return index, header, cube, notes


def read_fits_image(
    path: str | Path,
    *,
    hdu: int | str | None = None,
    cube_plane: CubePlane = "moment0",
    min_size: int = 1,
    max_pixels: int | None = None,
) -> FitsImage:
    """Read one image: the first HDU holding image data, or ``hdu`` (index or EXTNAME).

    BSCALE/BZERO/BLANK are applied and data come back as float32 with NaN for invalid pixels. Whole-file
    gzip/bzip2 and tile-compressed HDUs are read, and the data are decoded here, so a file accepted is a file
    whose pixels can be read; DATASUM is checked where the file carries one. A 3-D cube gives ``cube_plane``
    (index along the first numpy axis) or its NaN-aware channel sum ("moment0", in BUNIT per channel, not
    multiplied by the channel width); length-1 axes are squeezed first, so 4-D data with a degenerate Stokes
    axis work. Images above ``max_pixels`` (default :func:`max_pixels_limit`) are refused before decoding.
    An image kept with more than half its pixels invalid, or with float64 values beyond float32, carries a
    warning (``FitsImage.warnings``, also logged).

    Raises an :class:`InvalidInputError` subclass for every kind of unusable file.
    """
    name = str(path)
    limit = max_pixels_limit(max_pixels)
    raw = read_bytes(name, limit)
    sha256 = hashlib.sha256(raw).hexdigest()
    content = decompress(name, raw, limit)
    check_fits_start(name, content, compressed=content is not raw)
    index, header, cube, notes = _decode(name, content, hdu, limit)
    data, plane = _to_image(name, cube, cube_plane)
    mask = ~np.isfinite(data)
    _validate_content(name, data, mask, min_size)
    notes += _content_warnings(mask)
    for note in notes:
        log.warning("%s: %s", name, note)
    return FitsImage(
        path=name,
        data=data,
        mask=mask,
        header=header,
        wcs=_celestial_wcs(name, header),
        hdu_index=index,
        sha256=sha256,
        plane=plane,
        warnings=tuple(notes),
    )


def usable_size(resolution: int, tile: int | None = None) -> int:
    """Smallest usable image side for a model of this resolution: the tile size instead when inputs are tiled."""
    return max(tile or 0, resolution)


def read_fits_batch(
    paths: Iterable[str | Path],
    *,
    hdu: int | str | None = None,
    cube_plane: CubePlane = "moment0",
    min_size: int = 1,
    max_pixels: int | None = None,
) -> tuple[list[FitsImage], list[QuarantinedInput]]:
    """Read every path; unusable files are quarantined with their reason and never stop the rest."""
    images: list[FitsImage] = []
    quarantined: list[QuarantinedInput] = []
    for path in paths:
        try:
            images.append(
                read_fits_image(path, hdu=hdu, cube_plane=cube_plane, min_size=min_size, max_pixels=max_pixels)
            )
        except InvalidInputError as exc:
            log.warning("quarantined %s", exc)
            quarantined.append(QuarantinedInput.from_error(exc))
    return images, quarantined


# ---------------------------------------------------------------------------------------------------------
# Tiling


def _cutout_header(header: fits.Header, wcs: WCS | None, height: int, width: int) -> fits.Header:
    out = header.copy()
    out["NAXIS1"], out["NAXIS2"] = width, height
    if wcs is not None:
        out.update(wcs.to_header())
    return out


TILE_DROP_REASONS = ("masked", "flat", "edge")
"""Why :func:`tile_grid` drops a tile: mostly invalid pixels, constant, or mostly one repeated value (the zero
padding or flat border of a frame)."""


PADDING_FRACTION = 0.99
"""A frame whose outermost ring of valid pixels holds one value this often is padded with that value."""


def padding_value(image: FitsImage) -> float | None:
    """The value a frame is padded with (zeros outside an all-sky ellipse, a flat scan border): the one value
    that fills at least :data:`PADDING_FRACTION` of the outermost ring of valid pixels; None when there is none."""
    data, mask = image.data, image.mask
    ring = np.concatenate([data[0], data[-1], data[1:-1, 0], data[1:-1, -1]])
    valid = ring[~np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])]
    if valid.size == 0:
        return None
    values, counts = np.unique(valid, return_counts=True)
    top = int(np.argmax(counts))
    return float(values[top]) if counts[top] >= PADDING_FRACTION * valid.size else None


def _drop_reason(data: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], max_invalid_fraction: float,
                 edge_value: float | None) -> str | None:
    if mask.mean() > max_invalid_fraction:
        return "masked"
    valid = data[~mask]
    if valid.size == 0 or float(valid.min()) == float(valid.max()):
        return "flat"
    if edge_value is not None and np.count_nonzero(valid == edge_value) + np.count_nonzero(mask) > mask.size / 2:
        return "edge"
    return None


def _grid_origins(length: int, size: int, step: int, centred: bool) -> range:
    offset = (length - size) % step // 2 if centred else 0
    return range(offset, length - size + 1, step)


def tile_grid(
    image: FitsImage,
    size: int,
    *,
    stride: int | None = None,
    max_invalid_fraction: float = 0.5,
    edge_value: float | None = None,
    centred: bool = False,
) -> tuple[list[FitsImage], dict[str, int]]:
    """Cut ``image`` into ``size`` x ``size`` tiles on a grid with ``stride`` (default: no overlap); returns the
    kept tiles and how many were dropped for each of :data:`TILE_DROP_REASONS`.

    Uses astropy ``Cutout2D`` so each tile keeps a correct WCS. Dropped: tiles with more than
    ``max_invalid_fraction`` invalid pixels ("masked"), constant tiles ("flat", e.g. the zero padding outside an
    all-sky projection) and tiles where the frame's padding ``edge_value`` (:func:`padding_value`) and invalid
    pixels together cover more than half of the tile ("edge"; off when None). ``centred`` places the grid in the
    middle of the image (the remainder split between both sides) instead of at the origin. The tile's ``plane``
    records its origin, e.g. "cutout y0=128 x0=256" (after the parent's plane, if any).
    """
    step = size if stride is None else stride
    if size < 1 or step < 1:
        raise ValueError(f"tile size and stride must be positive, got size={size}, stride={step}")
    height, width = image.shape
    if min(height, width) < size:
        raise ImageTooSmallError(image.path, f"image is {height}x{width}, smaller than the tile size {size}")
    tiles: list[FitsImage] = []
    dropped = dict.fromkeys(TILE_DROP_REASONS, 0)
    for y0 in _grid_origins(height, size, step, centred):
        for x0 in _grid_origins(width, size, step, centred):
            centre = (x0 + (size - 1) / 2, y0 + (size - 1) / 2)
            cut = Cutout2D(image.data, centre, (size, size), wcs=image.wcs, mode="strict", copy=True)
            mask = image.mask[cut.slices_original].copy()
            reason = _drop_reason(cut.data, mask, max_invalid_fraction, edge_value)
            if reason is not None:
                dropped[reason] += 1
                continue
            origin = f"cutout y0={y0} x0={x0}"
            tiles.append(
                replace(
                    image,
                    data=cut.data.astype(np.float32, copy=False),
                    mask=mask,
                    wcs=cut.wcs,
                    header=_cutout_header(image.header, cut.wcs, size, size),
                    plane=origin if image.plane is None else f"{image.plane}; {origin}",
                )
            )
    return tiles, dropped


def tile_cutouts(
    image: FitsImage,
    size: int,
    *,
    stride: int | None = None,
    max_invalid_fraction: float = 0.5,
) -> list[FitsImage]:
    """The kept tiles of :func:`tile_grid` (grid at the origin; masked and flat tiles skipped, edge test off)."""
    return tile_grid(image, size, stride=stride, max_invalid_fraction=max_invalid_fraction)[0]
