"""The one switch for the real FITS dev set: ``OOD_DEV_DATA`` (default ``../shared/data/fits``).

The dev set (docs/DESIGN.md "Dev data": 82 real files from github.com/astropy/astropy-data, each listed with its
source, commit and licence note in the set's MANIFEST.csv) is not part of the repository. A relative
``OOD_DEV_DATA`` is taken from the repository root. tests/conftest.py marks every test that needs the set
``devdata`` and skips all of them with the one reason below when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dev_data_dir() -> Path:
    """Where the real FITS dev set is looked for: ``$OOD_DEV_DATA``, default ``../shared/data/fits``."""
    return (REPO / os.environ.get("OOD_DEV_DATA", "../shared/data/fits")).resolve()


FITS_DIR = dev_data_dir()
MANIFEST = FITS_DIR / "MANIFEST.csv"
DEV_DATA_PRESENT = MANIFEST.is_file()
DEV_DATA_MISSING = (
    f"real FITS dev set not found at {FITS_DIR}: set OOD_DEV_DATA to a copy of it (82 files from "
    "github.com/astropy/astropy-data, listed in its MANIFEST.csv; docs/DESIGN.md 'Dev data')"
)
