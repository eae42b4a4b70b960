"""Reading FITS: validation with quarantine reasons, HDU choice, cubes, tiling into cutouts, band groups."""

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

__all__ = [
    "FITS_SUFFIXES",
    "BandGroup",
    "FitsImage",
    "QuarantinedInput",
    "band_names",
    "expand_inputs",
    "read_band_group",
    "read_fits_batch",
    "read_fits_image",
    "tile_band_group",
    "tile_cutouts",
    "unmatched_inputs",
    "usable_size",
]
