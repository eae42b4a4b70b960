"""Every figure is written as a real PNG of a sensible size; contact sheets are grey with a labelled colour bar;
bad input raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from ood_core.errors import ConfigurationError
from ood_core.evaluation import metrics as M
from ood_core.evaluation import plots, sheets

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.indices((32, 32))
    blob = 50 * np.exp(-((yy - 16) ** 2 + (xx - 12) ** 2) / 8.0)
    return {
        "reference": rng.normal(10, 1, (5, 32, 32)) + blob,
        "method": rng.normal(10, 2, (3, 32, 32)),
        "in_domain": rng.uniform(0, 30, (9, 32, 32)),
    }


def _check_png(path: Path, min_width: int) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)
    assert pixels.shape[1] >= min_width
    assert float(pixels[..., :3].std()) > 0.01, "the figure is blank"
    return pixels


def test_contact_sheet(sets: dict[str, np.ndarray], tmp_path: Path) -> None:
    path = sheets.contact_sheet(sets, tmp_path / "sub" / "sheet.png", per_row=4, units="MJy/sr")
    pixels = _check_png(path, 500)
    assert pixels.shape[0] > 450  # three rows of panels big enough to read
    one_row = _check_png(sheets.contact_sheet({"reference": sets["reference"]}, tmp_path / "one.png"), 200)
    assert one_row.shape[0] < pixels.shape[0]


def test_contact_sheet_is_grey_single_band_data(sets: dict[str, np.ndarray], tmp_path: Path) -> None:
    """Single-band images (and the whole sheet) in grey: every pixel has R = G = B."""
    pixels = imread(sheets.contact_sheet(sets, tmp_path / "grey.png", labels={"method": ["a", "b", "c"]}))
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 1], atol=1e-6)
    np.testing.assert_allclose(pixels[..., 1], pixels[..., 2], atol=1e-6)


def test_colour_bar_ticks_span_the_display_range_with_faint_end_ticks(sets: dict[str, np.ndarray]) -> None:
    norm = sheets._display_norm(np.asarray(sets["reference"], dtype=np.float64))
    ticks = sheets._bar_ticks(norm)
    assert ticks[0] == norm.vmin and ticks[-1] == norm.vmax and len(ticks) == 5
    # Evenly spaced on the asinh display scale: the lower half of the scale holds two ticks, not zero.
    assert sum(norm(t) < 0.6 for t in ticks) >= 3
    lo, hi = np.percentile(sets["reference"], [0.5, 99.8])
    assert np.isclose(norm.vmin, lo) and np.isclose(norm.vmax, hi)


def test_distance_labels_and_note_name_the_near_copy_threshold() -> None:
    assert sheets.distance_labels([0.2, 0.05], 0.1) == ["d_in 0.200", "d_in 0.050 near-copy"]
    assert sheets.distance_labels([0.05], None) == ["d_in 0.050"]
    note = sheets.distance_note(0.0766, 0.5)
    assert "below 0.077" in note and "0.5 x the inputs' median nearest-neighbour distance" in note
    assert "flip/rotation" in note
    assert "near-copy" not in sheets.distance_note(None, None)


def test_contact_sheet_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        sheets.contact_sheet({}, tmp_path / "x.png")
    with pytest.raises(ConfigurationError, match="must be"):
        sheets.contact_sheet({"a": np.zeros((4, 4))}, tmp_path / "x.png")


def test_spectra_histograms_morphology_minkowski(sets: dict[str, np.ndarray], tmp_path: Path) -> None:
    spectra = {name: M.isotropic_power_spectrum(images) for name, images in sets.items()}
    _check_png(plots.power_spectra(spectra, tmp_path / "ps.png", units="MJy/sr"), 300)
    _check_png(plots.pixel_histograms(sets, tmp_path / "hist.png"), 300)
    quantiles = (0.1, 0.5, 0.9, 0.99)
    thresholds = M.minkowski_thresholds(sets["reference"], quantiles)
    stats = {name: M.set_statistics(images, thresholds) for name, images in sets.items()}
    _check_png(plots.morphology_panels({k: s.morphology for k, s in stats.items()}, tmp_path / "morph.png"), 500)
    _check_png(plots.minkowski_panels({k: s.minkowski for k, s in stats.items()}, tmp_path / "mf.png"), 500)
    _check_png(plots.minkowski_panels({k: s.minkowski for k, s in stats.items()}, tmp_path / "mfq.png",
                                      quantiles=quantiles), 500)
    with pytest.raises(ConfigurationError):
        plots.pixel_histograms({}, tmp_path / "none.png")
    novelty = {"method": np.array([0.2, 0.3, 0.25]), "augmentation": np.array([0.1, 0.4])}
    _check_png(plots.novelty_histograms(novelty, tmp_path / "nov.png", inputs_nn=[0.3, 0.35], threshold=0.15), 300)
