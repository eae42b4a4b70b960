"""Shared fixtures. Real FITS data live read-only beside the checkout in ../shared/data/fits."""

from __future__ import annotations

from pathlib import Path

import pytest

FITS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fits"


@pytest.fixture(scope="session")
def fits_dir() -> Path:
    """The shared real-FITS folder (images/, cutouts_128/, extras/, MANIFEST.csv); skip when absent."""
    if not FITS_DIR.is_dir():
        pytest.skip(f"real FITS test data not found at {FITS_DIR}")
    return FITS_DIR
