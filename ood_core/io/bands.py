"""Band groups: several FITS images of one field in different bands, aligned onto one pixel grid.

A band group (``g.fits r.fits i.fits``) becomes one multi-channel image: band k -> channel k, in the order
given. The first band's grid is the reference; a band on another grid (other shape or WCS) is resampled onto it
with ``reproject.reproject_interp`` (bilinear), and pixels it does not cover become invalid (NaN, masked).
Bands without a celestial WCS can only be combined when they already share the reference's shape.

Band names: the FILTER (or BAND) header values when they are present and distinct; otherwise the part of the
file names that differs (``galaxy_HCG88_SDSS_g.fits`` ... -> ``g``, ``r``, ``i``), with a warning, because
headers are sometimes copied between bands (the HCG 88 r and i files say FILTER = g).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.utils.exceptions import AstropyWarning

from ood_core.errors import InvalidInputError
from ood_core.io.fits import FitsImage, read_fits_image, tile_cutouts

log = logging.getLogger(__name__)

BAND_KEYWORDS = ("FILTER", "BAND")
"""Header keywords that name a band, in order of preference."""


@dataclass(frozen=True, eq=False)
class BandGroup:
    """The bands of one field on one pixel grid (same shape; the first band's WCS)."""

    bands: list[FitsImage]
    names: list[str]
    """One name per band (channel order)."""
    reprojected: list[bool]
    """Whether each band was resampled onto the first band's grid."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.bands[0].shape

    @property
    def path(self) -> str:
        """The group's files joined with ``+`` (how messages and provenance name it)."""
        return "+".join(band.path for band in self.bands)

    def band_map(self) -> list[dict[str, Any]]:
        """JSON-safe band -> channel map: channel, name, file, header FILTER/BAND, sha256, resampled or not."""
        return [{"channel": k, "name": name, "path": band.path, "sha256": band.sha256,
                 **{key: _header_value(band, key) for key in BAND_KEYWORDS}, "reprojected": moved}
                for k, (band, name, moved) in enumerate(zip(self.bands, self.names, self.reprojected, strict=True))]


def _header_value(image: FitsImage, key: str) -> str | None:
    value = image.header.get(key)
    return None if value is None or not str(value).strip() else str(value).strip()


def _common_start(texts: Sequence[str]) -> str:
    """The longest common leading substring of ``texts`` (character by character: these are names, not paths)."""
    first = min(texts, key=len)
    for i, char in enumerate(first):
        if any(text[i] != char for text in texts):
            return first[:i]
    return first


def band_names(images: Sequence[FitsImage]) -> list[str]:
    """Distinct header band names, else the differing part of the file names (see the module docstring)."""
    for key in BAND_KEYWORDS:
        values = [_header_value(image, key) for image in images]
        if all(values) and len(set(values)) == len(values):
            return [str(v) for v in values]
    stems = [Path(image.path).name.split(".")[0] for image in images]
    prefix = len(_common_start(stems))
    suffix = len(_common_start([s[::-1] for s in stems]))
    names = [s[prefix: len(s) - suffix] or s for s in stems]
    if len(set(names)) != len(names):
        names = [f"band{k + 1}" for k in range(len(images))]
    headers = {key: [_header_value(image, key) for image in images] for key in BAND_KEYWORDS}
    log.warning("band names %s taken from the file names: the headers do not name distinct bands (%s)", names,
                "; ".join(f"{key}={values}" for key, values in headers.items()))
    return names


def _same_grid(reference: FitsImage, band: FitsImage) -> bool:
    if band.shape != reference.shape:
        return False
    if reference.wcs is None or band.wcs is None:
        return True
    return bool(reference.wcs.wcs.compare(band.wcs.wcs, tolerance=1e-9))


def align_band(reference: FitsImage, band: FitsImage) -> FitsImage:
    """``band`` on ``reference``'s pixel grid (bilinear ``reproject_interp``; uncovered pixels invalid)."""
    from reproject import reproject_interp

    if reference.wcs is None or band.wcs is None:
        raise InvalidInputError(band.path, f"its grid ({band.shape[0]}x{band.shape[1]}) differs from the first "
                                           f"band's {reference.path} ({reference.shape[0]}x{reference.shape[1]}) "
                                           "and a celestial WCS is missing, so it cannot be aligned")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        data, footprint = reproject_interp((np.where(band.mask, np.nan, band.data), band.wcs), reference.wcs,
                                           shape_out=reference.shape)
    values = np.asarray(data, dtype=np.float32)
    mask = ~np.isfinite(values) | (np.asarray(footprint) <= 0)
    if mask.all():
        raise InvalidInputError(band.path, f"it does not overlap the first band {reference.path} on the sky")
    values[mask] = np.nan
    header = band.header.copy()
    header.update(reference.wcs.to_header())
    origin = f"reprojected onto {Path(reference.path).name}"
    return replace(band, data=values, mask=mask, wcs=reference.wcs, header=header,
                   plane=origin if band.plane is None else f"{band.plane}; {origin}")


def read_band_group(paths: Sequence[str | Path], *, hdu: int | str | None = None, min_size: int = 1) -> BandGroup:
    """Read and align the bands of one field (first band = reference grid). InvalidInputError: unusable."""
    if len(paths) < 2:
        raise InvalidInputError(str(paths[0]) if paths else "(empty band group)",
                                "a band group needs at least 2 files, one per band")
    images = [read_fits_image(path, hdu=hdu, min_size=min_size) for path in paths]
    reference = images[0]
    aligned, moved = [reference], [False]
    for band in images[1:]:
        same = _same_grid(reference, band)
        aligned.append(band if same else align_band(reference, band))
        moved.append(not same)
    return BandGroup(aligned, band_names(images), moved)


def tile_band_group(group: BandGroup, size: int) -> list[BandGroup]:
    """Matching ``size`` tiles of every band; a tile is kept only where every band keeps it."""
    per_band = [{str(tile.plane).rsplit("; ", 1)[-1]: tile for tile in tile_cutouts(band, size)}
                for band in group.bands]  # keyed by "cutout y0=.. x0=..", after any "reprojected onto .."
    kept = [origin for origin in per_band[0] if all(origin in tiles for tiles in per_band[1:])]
    return [BandGroup([tiles[origin] for tiles in per_band], group.names, group.reprojected) for origin in kept]
