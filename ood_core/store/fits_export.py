"""Export a run's samples to FITS files whose headers carry the run's provenance.

One file per sample, ``<run_id>_sample_<index>.fits``: the primary HDU holds ``samples_physical[index]``
as float32 in the inputs' unit (BUNIT). Header keywords (all <= 8 characters, FITS standard):

==========  ===========================================================================
OODRUN      run id                          OODSTORE  store URL (long values: CONTINUE)
OODIDX      sample index in the run         OODSEED   sample seed (regenerates the sample)
OODPARNT    parent OOD latent, -1 if none   OODNNDST  nearest-input distance (novelty)
OODMSHA     model weights sha256, first 16 hex digits (the full value is in HISTORY)
OODT0       inversion bandwidth t0          OODSTEPS  DDIM steps K
OODETA      DDIM eta of generation          OODPRIOR  prior kind (scalar, ppca)
OODSTRAT    candidate strategy              OODRATE   acceptance rate of the run
OODVERS     ood-synth version               OODSCHEM  store schema version
OODBLOCK    block factor of the inputs (model pixel = OODBLOCK x OODBLOCK input pixels, summed or averaged)
OODPIXSC    pixel scale of the sample, arcsec per pixel (the inputs' scale x OODBLOCK)
OODBANDS    band-group runs: number of bands (planes of the cube, NAXIS3)
BANDn       band-group runs: name of plane n (1-based; channel n-1)
BFILEn      band-group runs: file of band n in the sample's parent group   BFILTn  its FILTER/BAND header
==========  ===========================================================================

A band-group run (``ood run --bands``) exports each sample as a cube, one plane per band, each in the
inputs' unit, and names the planes in BANDn (the band -> channel map of the run's provenance).

Pixel scale: ``CD1_1 .. CD2_2`` (with ``CUNIT1/2 = deg``) are the inputs' CD matrix times the block factor
(a 128-pixel input seen by a 64-pixel model: 2x), from the parent input of the sample (the first input when
the sample has none). A generated sample has no position on the sky: the WCS is linear, not celestial
(``CTYPE1/2 = 'LINEAR'``), its axes angular offsets from the image centre (``CRPIX``, where ``CRVAL = 0``).
The store URL is recorded absolute. Every file carries CHECKSUM and DATASUM (FITS checksum convention).

Criterion values use :data:`CRITERION_KEYWORDS` (the card comment repeats the full criterion name);
a criterion without an entry there gets ``OODCRInn`` with nn its 1-based position.
HISTORY cards summarise the rest of the provenance (times, git commit, model source, inputs); a long line
is wrapped at word boundaries (a word longer than a card, such as a long path, is cut).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ood_core.store.contract import SCHEMA_VERSION
from ood_core.store.errors import ExportExistsError
from ood_core.store.provenance import utc_now
from ood_core.store.readers import latest_complete_run_id, open_run

#: FITS keywords of the sampler's criteria (names from ``ood_core.method.acceptance.CRITERION_NAMES``).
CRITERION_KEYWORDS: dict[str, str] = {
    "mean_distance_to_reference": "OODCDREF",
    "mean_angle_to_ood_deg": "OODCAOOD",
    "mean_pair_angle_at_candidate_deg": "OODCAPAI",
}
SHA_PREFIX_LENGTH = 16
_HISTORY_WIDTH = 72  # characters of text a HISTORY card holds
_CARD_WIDTH = 80


def absolute_store_url(store_url: str) -> str:
    """A local store path made absolute (as recorded in headers); URLs with a scheme unchanged."""
    if "://" in store_url and not store_url.startswith("file://"):
        return store_url
    return os.path.abspath(store_url.removeprefix("file://"))


def criterion_keyword(name: str, position: int) -> str:
    """The header keyword of a criterion: the fixed table, else ``OODCRInn`` (1-based position)."""
    return CRITERION_KEYWORDS.get(name, f"OODCRI{position + 1:02d}")


def _get(record: Mapping[str, Any], *path: str) -> Any:
    """Nested lookup that returns None where any level is missing."""
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _card_value(value: Any) -> bool | int | float | str | None:
    """A value FITS can hold (finite numbers, strings), or None to leave the keyword out."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return str(value)


def _set(header: fits.Header, keyword: str, value: Any, comment: str) -> None:
    card_value = _card_value(value)
    if card_value is None:
        return
    bare = fits.Card(keyword, card_value).image
    if len(bare) == _CARD_WIDTH:  # one card: shorten the comment to the room left rather than overflow
        room = _CARD_WIDTH - len(bare.rstrip()) - 3
        comment = comment[:room] if room > 0 else ""
    header[keyword] = (card_value, comment)


def history_lines(text: str) -> list[str]:
    """``text`` as HISTORY card texts: printable ASCII (FITS rule), wrapped at word boundaries so that each card
    reads on its own (timestamps and words stay whole; only a word longer than a card is cut)."""
    clean = text.encode("ascii", "replace").decode("ascii")
    indent = clean[: len(clean) - len(clean.lstrip(" "))]
    return textwrap.wrap(clean, width=_HISTORY_WIDTH, subsequent_indent=indent + "  ", break_on_hyphens=False,
                         drop_whitespace=True)


def _history(header: fits.Header, text: str) -> None:
    for line in history_lines(text):
        header.add_history(line)


def run_header(
    record: Mapping[str, Any], store_url: str, units: str, criterion_names: list[str]
) -> fits.Header:
    """The part of the header shared by every sample of a run."""
    header = fits.Header()
    if units:
        header["BUNIT"] = (units, "physical unit of the inputs")
    header["DATE"] = (utc_now().strftime("%Y-%m-%dT%H:%M:%S"), "file written (UTC)")
    header["ORIGIN"] = ("ood-synth", "few-shot out-of-domain diffusion sampling")
    _set(header, "OODRUN", record.get("run_id"), "run id in the store")
    _set(header, "OODSTORE", store_url, "zarr store of the run")
    _set(header, "OODSCHEM", SCHEMA_VERSION, "store schema version")
    _set(header, "OODVERS", _get(record, "environment", "version"), "ood-synth version")
    sha = _get(record, "model", "weights_sha256")
    if isinstance(sha, str):
        _set(header, "OODMSHA", sha[:SHA_PREFIX_LENGTH], "model weights sha256 prefix (full in HISTORY)")
    _set(header, "OODT0", _first(_get(record, "inversion", "t0"), _get(record, "parameters", "t0")),
         "DDIM inversion bandwidth t0")
    _set(header, "OODSTEPS", _first(_get(record, "inversion", "steps"), _get(record, "parameters", "steps")),
         "DDIM steps K between 0 and t0")
    _set(header, "OODETA", _first(_get(record, "generation", "eta"), _get(record, "parameters", "eta")),
         "DDIM eta of generation")
    _set(header, "OODPRIOR", _first(_get(record, "prior", "kind"), _get(record, "parameters", "prior")),
         "OOD prior kind")
    strategy = _first(_get(record, "sampler", "strategy"), _get(record, "parameters", "strategy"))
    _set(header, "OODSTRAT", strategy, "candidate strategy")
    _set(header, "OODRATE", _get(record, "sampler", "acceptance_rate"), "acceptance rate of the run")

    _history(header, "ood-synth sample; provenance summary of the run follows")
    _history(header, f"run {record.get('run_id')}")
    _history(header, f"started {record.get('started')} ended {record.get('ended')}")
    _history(header, f"git commit {_get(record, 'environment', 'git_commit')}")
    _history(header, f"model {_get(record, 'model', 'source')}")
    if isinstance(sha, str):
        _history(header, "model weights sha256:")
        _history(header, sha)
    tried = _first(_get(record, "sampler", "tried"), _get(record, "sampler", "candidates_tried"))
    _history(header, f"seed {_get(record, 'parameters', 'seed')} samples {_get(record, 'sampler', 'written')}"
                     f" candidates tried {tried}")
    _history(header, f"normalization {_get(record, 'normalization', 'mode')}")
    inputs = record.get("inputs")
    if isinstance(inputs, list):
        _history(header, f"{len(inputs)} inputs:")
        for item in inputs:
            path = item.get("path") if isinstance(item, Mapping) else item
            _history(header, f"  {path}")
        sizes = sorted({(int(_get(item, "crop", "side")), int(item["block"])) for item in inputs
                        if isinstance(item, Mapping) and isinstance(item.get("block"), int)
                        and isinstance(_get(item, "crop", "side"), int)})
        if sizes:
            how = ", ".join(f"{side} -> {side // block} px ({block}x)" for side, block in sizes)
            _history(header, f"inputs were centre-cropped and {block_rule(record)[1]} to the model "
                             f"resolution before inversion: {how}")
    for position, name in enumerate(criterion_names):
        _history(header, f"criterion {criterion_keyword(name, position)} = {name}")
    return header


BLOCK_RULES = {
    "sum": ("summed", "block-summed (NaN-aware: the valid pixels' mean x the block area)"),
    "mean": ("averaged", "block-averaged (NaN-aware mean)"),
    "both": ("summed or averaged", "block-summed or -averaged by band (provenance normalization.resampling)"),
}
"""Words for how a run made model pixels from input blocks: (OODBLOCK comment, HISTORY)."""


def block_rule(record: Mapping[str, Any]) -> tuple[str, str]:
    """How the run made model pixels from input blocks (provenance ``normalization.resampling``), in words
    (:data:`BLOCK_RULES`); runs from before the rule was recorded averaged."""
    rules = {r.get("rule") for r in _get(record, "normalization", "resampling") or [] if isinstance(r, Mapping)}
    return BLOCK_RULES["sum" if rules == {"sum"} else "both" if "sum" in rules else "mean"]


def _input_geometry(record: Mapping[str, Any], index: int) -> tuple[int | None, np.ndarray | None]:
    """Block factor and CD matrix (deg per input pixel) of input ``index`` from provenance (None when unknown)."""
    inputs = record.get("inputs")
    if not isinstance(inputs, list) or not 0 <= index < len(inputs) or not isinstance(inputs[index], Mapping):
        return None, None
    item = inputs[index]
    block = int(item["block"]) if isinstance(item.get("block"), int) else None
    cd = item.get("cd_matrix_deg")
    matrix = np.asarray(cd, dtype=np.float64) if isinstance(cd, list) else None
    if matrix is not None and (matrix.shape != (2, 2) or not np.isfinite(matrix).all()):
        matrix = None
    return block, matrix


def set_pixel_scale(header: fits.Header, record: Mapping[str, Any], parent: int, shape: tuple[int, int]) -> None:
    """Block factor, and the pixel scale of the sample (parent input's CD x block), without a sky position."""
    block, matrix = _input_geometry(record, parent if parent >= 0 else 0)
    _set(header, "OODBLOCK", block, f"inputs {block_rule(record)[0]} in blocks of this many pixels per axis")
    if matrix is None:
        return
    scaled = matrix * (block or 1)
    _set(header, "OODPIXSC", float(np.sqrt(abs(np.linalg.det(scaled)))) * 3600.0,
         "arcsec per pixel: inputs' scale x OODBLOCK")
    for axis in (1, 2):
        _set(header, f"CTYPE{axis}", "LINEAR", "angular offset, not a sky coordinate")
        _set(header, f"CRPIX{axis}", (shape[2 - axis] + 1) / 2.0, "centre pixel: offsets are from here")
        _set(header, f"CRVAL{axis}", 0.0, "offset at CRPIX; no sky position")
        _set(header, f"CUNIT{axis}", "deg", "unit of the offset")
    for i in (1, 2):
        for j in (1, 2):
            _set(header, f"CD{i}_{j}", float(scaled[i - 1, j - 1]), "inputs' CD x block factor")


def set_bands(header: fits.Header, record: Mapping[str, Any], parent: int) -> None:
    """Band-group runs: OODBANDS and, per plane n, BANDn (name), BFILEn (file) and BFILTn (header filter)."""
    names = (record.get("bands") or {}).get("names") or []
    if not names:
        return
    inputs = record.get("inputs") or []
    source = inputs[parent if 0 <= parent < len(inputs) else 0] if inputs else {}
    band_map = source.get("bands") or [] if isinstance(source, Mapping) else []
    _set(header, "OODBANDS", len(names), "bands: planes of this cube (NAXIS3)")
    for n, name in enumerate(names, start=1):
        _set(header, f"BAND{n}", str(name), f"band of plane {n} (model channel {n - 1})")
        if n <= len(band_map):
            _set(header, f"BFILE{n}", Path(str(band_map[n - 1].get("path", ""))).name, f"file of band {n}")
            _set(header, f"BFILT{n}", band_map[n - 1].get("FILTER") or band_map[n - 1].get("BAND"),
                 f"FILTER/BAND header of band {n}'s file")


def export_run_fits(
    store_url: str,
    outdir: str | os.PathLike[str],
    run_id: str | None = None,
    *,
    overwrite: bool = False,
    verify: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write one FITS file per sample of a complete run (latest when ``run_id`` is None); return the paths.

    The run is verified against its checksums first (``verify``, see :func:`open_run`): a damaged run raises
    StoreIntegrityError naming the array, and no file is written.
    """
    if run_id is None:
        run_id = latest_complete_run_id(store_url, storage_options=storage_options)
    ds = open_run(store_url, run_id, chunks=None, verify=verify, storage_options=storage_options)
    record: dict[str, Any] = dict(ds.attrs["ood_run"])
    names = [str(n) for n in ds["criterion"].values]
    physical = ds["samples_physical"]
    base = run_header(record, absolute_store_url(store_url), str(physical.attrs.get("units", "")), names)
    seeds = ds["sample_seed"].values
    parents = ds["sample_parent"].values
    criteria = ds["sample_criteria"].values
    distances = ds["sample_nearest_input_distance"].values

    out = Path(outdir)
    targets = [out / f"{run_id}_sample_{index:06d}.fits" for index in range(ds.sizes["sample"])]
    existing = [path for path in targets if path.exists()]
    if existing and not overwrite:  # refuse before writing anything, so no folder is left half replaced
        raise ExportExistsError(str(outdir), existing)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, path in enumerate(targets):
        header = base.copy()
        # New keywords go after the last keyword card, i.e. before the HISTORY block.
        set_pixel_scale(header, record, int(parents[index]), (physical.shape[-2], physical.shape[-1]))
        set_bands(header, record, int(parents[index]))
        _set(header, "OODIDX", index, "sample index in the run")
        _set(header, "OODSEED", seeds[index], "sample seed")
        _set(header, "OODPARNT", parents[index], "parent OOD latent, -1 if none")
        _set(header, "OODNNDST", distances[index], "nearest-input distance")
        for position, name in enumerate(names):
            _set(header, criterion_keyword(name, position), criteria[index, position], name[:47])
        data = np.asarray(physical[index].values, dtype=np.float32)
        fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=overwrite, checksum=True)
        paths.append(path)
    return paths
