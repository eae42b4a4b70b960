"""Reading FITS: validation with quarantine reasons, HDU choice, cubes, tiling into cutouts, band groups, what a
BUNIT says about resampling."""

from ood_core.errors import QuarantinedInput
from ood_core.io.bands import BandGroup, band_names, read_band_group, tile_band_group
from ood_core.io.fits import (
    FITS_SUFFIXES,
    FitsImage,
    expand_inputs,
    read_fits_batch,
    read_fits_image,
    tile_cutouts,
    unmatched_inputs,
    usable_size,
)
from ood_core.io.units import UnitClass, classify_bunit

__all__ = [
    "FITS_SUFFIXES",
    "BandGroup",
    "FitsImage",
    "QuarantinedInput",
    "UnitClass",
    "band_names",
    "classify_bunit",
    "expand_inputs",
    "read_band_group",
    "read_fits_batch",
    "read_fits_image",
    "tile_band_group",
    "tile_cutouts",
    "unmatched_inputs",
    "usable_size",
]
