"""Reading FITS: validation with quarantine reasons, HDU choice, cubes, tiling into cutouts."""

from ood_core.errors import QuarantinedInput
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
    "FitsImage",
    "QuarantinedInput",
    "expand_inputs",
    "read_fits_batch",
    "read_fits_image",
    "tile_cutouts",
    "unmatched_inputs",
    "usable_size",
]
