"""The hardening corpus of issue 13: each kind of bad input, damaged store and hostile file, built in a temporary
folder and put through the real code; prints the table (kind, expected, observed) in Markdown.

    PYTHONPATH=. python bench/corpus_table.py [--fits-dir DIR]

``--fits-dir`` defaults to ``$OOD_DEV_DATA``, the dev set of docs/DESIGN.md section 9.

Inputs go through the run's ingest path (expand, validate, deduplicate: ``ood_core.pipeline.read_inputs``)
with the shipped model's resolution (64); stores are written with ``RunWriter`` and damaged on disk. Nothing
here runs the network.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ood_core.errors import NoUsableInputError
from ood_core.pipeline import PipelineParameters, ingest, read_inputs
from ood_core.store import (
    RunWriter,
    StoreError,
    StoreIntegrityError,
    audit_store,
    export_run_fits,
    list_runs,
    open_run,
    open_store,
)

RESOLUTION = 64
Row = tuple[str, str, str]


def _outcome(specs: list[str]) -> str:
    """What the ingest path does with these specs: read, or quarantined with which error and reason."""
    params = PipelineParameters(inputs=specs, store="unused.zarr")
    images, quarantined = read_inputs(params, RESOLUTION)
    parts = [f"read {Path(im.path).name}" + (f" (warning: {'; '.join(im.warnings)})" if im.warnings else "")
             for im in images]
    parts += [f"quarantined {Path(q.path).name} {q.error}: {q.reason}" for q in quarantined]
    return "; ".join(parts) or "nothing"


def _garble(path: Path, length: int = 400) -> Path:
    raw = bytearray(path.read_bytes())
    with fits.open(path) as hdul:
        start = int(hdul.fileinfo(len(hdul) - 1)["datLoc"])
    for offset in range(start + 100, start + 100 + length):
        raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))
    return path


def _tile_file(folder: Path, kind: str, checksum: bool = False) -> Path:
    data = np.abs(np.random.default_rng(0).normal(size=(128, 128)) * 100).astype(np.int16)
    path = folder / f"garbled_{kind.lower()}{'_datasum' if checksum else ''}.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type=kind)]).writeto(path, checksum=checksum)
    return _garble(path, 40 if kind == "PLIO_1" else 400)


def _gzip_bomb(path: Path, side: int) -> Path:
    header = fits.Header([("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", side), ("NAXIS2", side)])
    size = -(-side * side * 4 // 2880) * 2880
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts, block = [packer.compress(header.tostring().encode())], bytes(1 << 22)
    for start in range(0, size, len(block)):
        parts.append(packer.compress(block[: min(len(block), size - start)]))
    path.write_bytes(b"".join([*parts, packer.flush()]))
    return path


def _card(source: Path, target: Path, keyword: str, value: str) -> Path:
    raw = source.read_bytes()
    header = raw[:2880].decode("ascii")
    start = next(i for i in range(0, 2880, 80) if header.startswith(keyword.ljust(8), i))
    card = f"{keyword.ljust(8)}= {value:>20}".ljust(80)
    target.write_bytes((header[:start] + card + header[start + 80:]).encode("ascii") + raw[2880:])
    return target


def input_rows(fits_dir: Path, tmp: Path) -> list[Row]:
    good = fits_dir / "cutouts_128" / "glimpse_y0000_x0000.fits"
    raw = good.read_bytes()
    image = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)

    def write(name: str, content: bytes) -> str:
        (tmp / name).write_bytes(content)
        return str(tmp / name)

    def hdus(name: str, *items: Any, **kw: Any) -> str:
        fits.HDUList(list(items)).writeto(tmp / name, **kw)
        return str(tmp / name)

    holes = image.copy()
    holes[:58] = np.nan
    huge = image.astype(np.float64)
    huge[0, :3] = 1e39
    (tmp / "obs[2]").mkdir()
    shutil.copy(good, tmp / "obs[2]" / "a.fits")
    (tmp / "empty_dir").mkdir()
    table = fits.BinTableHDU.from_columns([fits.Column(name="ra", format="D", array=np.zeros(4))])
    cases: list[tuple[str, str, Callable[[], list[str]]]] = [
        ("good cutout (control)", "read", lambda: [str(good)]),
        ("data cut in half", "quarantined TruncatedFitsError", lambda: [write("half.fits", raw[: len(raw) // 2])]),
        ("header cut (no END card)", "quarantined TruncatedFitsError", lambda: [write("head.fits", raw[:1000])]),
        ("text file named .fits", "quarantined NotFitsError", lambda: [write("notes.fits", b"my notes\n")]),
        ("empty file", "quarantined NotFitsError", lambda: [write("empty.fits", b"")]),
        ("damaged gzip stream", "quarantined TruncatedFitsError",
         lambda: [write("broken.fits.gz", gzip.compress(raw)[:5000])]),
        ("damaged bzip2 stream", "quarantined TruncatedFitsError",
         lambda: [write("broken.fits.bz2", bz2.compress(raw)[:3000])]),
        ("table HDU only", "quarantined NoImageHDUError", lambda: [hdus("table.fits", fits.PrimaryHDU(), table)]),
        ("all NaN", "quarantined EmptyImageError",
         lambda: [hdus("nan.fits", fits.PrimaryHDU(np.full((64, 64), np.nan, np.float32)))]),
        ("constant image", "quarantined EmptyImageError", lambda: [hdus("zero.fits", fits.PrimaryHDU(image * 0))]),
        ("1-D spectrum", "quarantined WrongDimensionError",
         lambda: [hdus("spec.fits", fits.PrimaryHDU(np.arange(100, dtype=np.float32)))]),
        ("5-D array", "quarantined WrongDimensionError",
         lambda: [hdus("5d.fits", fits.PrimaryHDU(np.ones((2, 3, 4, 5, 6), np.float32)))]),
        ("40x40, model needs 64", "quarantined ImageTooSmallError",
         lambda: [hdus("small.fits", fits.PrimaryHDU(image[:40, :40].copy()))]),
        ("missing path", "quarantined MissingInputError", lambda: [str(tmp / "missing.fits")]),
        ("glob matching nothing", "quarantined MissingInputError", lambda: [str(tmp / "*.nothing")]),
        ("folder without FITS", "quarantined MissingInputError", lambda: [str(tmp / "empty_dir")]),
        ("garbled RICE_1 tiles", "quarantined CorruptFitsError", lambda: [str(_tile_file(tmp, "RICE_1"))]),
        ("garbled GZIP_2 tiles", "quarantined CorruptFitsError", lambda: [str(_tile_file(tmp, "GZIP_2"))]),
        ("garbled HCOMPRESS_1 tiles", "quarantined CorruptFitsError",
         lambda: [str(_tile_file(tmp, "HCOMPRESS_1"))]),
        ("garbled PLIO_1 tiles with DATASUM", "quarantined CorruptFitsError",
         lambda: [str(_tile_file(tmp, "PLIO_1", checksum=True))]),
        ("garbled PLIO_1 tiles, no DATASUM", "read (undetectable: PLIO decodes garbage)",
         lambda: [str(_tile_file(tmp, "PLIO_1"))]),
        ("corrupt card NAXIS1 = abc", "quarantined CorruptFitsError (card named)",
         lambda: [str(_card(good, tmp / "naxis.fits", "NAXIS1", "abc"))]),
        ("corrupt card BITPIX = -33", "quarantined CorruptFitsError (card named)",
         lambda: [str(_card(good, tmp / "bitpix.fits", "BITPIX", "-33"))]),
        ("250 kB .fits.gz of 8000x8000", "quarantined ImageTooLargeError, little memory",
         lambda: [str(_gzip_bomb(tmp / "bomb.fits.gz", 8000))]),
        ("file named cut[1].fits", "read", lambda: [write("cut[1].fits", raw)]),
        ("folder named obs[2]/", "read", lambda: [str(tmp / "obs[2]")]),
        ("91 % NaN", "read with a warning", lambda: [hdus("holes.fits", fits.PrimaryHDU(holes))]),
        ("float64 beyond float32", "read with a warning", lambda: [hdus("huge.fits", fits.PrimaryHDU(huge))]),
        ("byte-identical copy", "second quarantined as duplicate",
         lambda: [str(good), write("copy.fits", raw)]),
    ]
    rows = []
    for kind, expected, make in cases:
        specs = make()
        observed = _outcome(specs)
        if "8000" in kind:
            observed += f" (peak RSS of a fresh process reading it: {_peak_rss_mb(specs[0]):.0f} MB)"
        rows.append((kind, expected, observed))
    rows.append(("one usable input", "refused before any network work, nothing written", _single(good, tmp)))
    return rows


def _peak_rss_mb(path: str) -> float:
    """Peak resident memory of a new Python process that imports the reader and reads ``path``."""
    # VmHWM (not ru_maxrss, which a child inherits from its parent on Linux).
    code = ("import sys\nfrom ood_core.io.fits import read_fits_image\n"
            "try:\n    read_fits_image(sys.argv[1])\nexcept Exception:\n    pass\n"
            "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])")
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


def _single(good: Path, tmp: Path) -> str:
    store = tmp / "single.zarr"
    try:
        ingest(PipelineParameters(inputs=[str(good)], store=str(store)), RESOLUTION, 3)
    except NoUsableInputError as exc:
        return f"NoUsableInputError ({str(exc).splitlines()[0]}); store written: {store.exists()}"
    return "accepted"


# --------------------------------------------------------------------------------------------- stores


def _complete_run(store: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    writer = RunWriter.create(store, n_inputs=3, channels=3, height=16, width=16, criterion_names=["a", "b"],
                              provenance={"parameters": {"seed": seed}}, units="MJy/sr")
    shape = (3, 3, 16, 16)
    writer.write_inputs(rng.normal(size=shape), rng.random((3, 16, 16)) < 0.1, rng.normal(size=shape),
                        rng.normal(size=shape), rng.uniform(30, 40, 3))
    for _ in range(2):
        writer.append_samples(rng.normal(size=(16, 3, 16, 16)), rng.normal(size=(16, 16, 16)),
                              rng.normal(size=(16, 3, 16, 16)), np.arange(16), np.zeros(16, np.int32),
                              rng.normal(size=(16, 2)), rng.random(16))
    writer.complete()
    return writer.run_id


def _observe(action: Callable[[], Any]) -> str:
    try:
        result = action()
    except (StoreIntegrityError, StoreError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[-1].strip()}"
    return f"ok: {result}"


def store_rows(tmp: Path) -> list[Row]:
    rows = []
    damages: list[tuple[str, str, Callable[[Path], None]]] = [
        ("deleted chunk of samples", "named by open_run, export-fits, ood check",
         lambda run: _first_chunk(run, "samples").unlink()),
        ("deleted chunk of samples_physical", "named by open_run, export-fits, ood check",
         lambda run: _first_chunk(run, "samples_physical").unlink()),
        ("deleted samples/zarr.json", "named (array missing), even with verify=False",
         lambda run: (run / "samples" / "zarr.json").unlink()),
        ("one flipped bit in a chunk", "named (checksum differs)", lambda run: _flip(_first_chunk(run, "inputs"))),
    ]
    for kind, expected, damage in damages:
        store = str(tmp / f"{abs(hash(kind))}.zarr")
        run_id = _complete_run(store, 1)
        damage(Path(store) / "runs" / run_id)
        observed = _observe(lambda: open_run(store, run_id, chunks=None).sizes["sample"])  # noqa: B023
        exported = _observe(lambda: len(export_run_fits(store, tmp / "fits", run_id)))  # noqa: B023
        checks = audit_store(store)
        rows.append((kind, expected, f"open_run -> {observed}; export -> {exported.split(':')[0]}; "
                                     f"ood check -> {['ok' if c.ok else 'DAMAGED' for c in checks]}"))
    store = str(tmp / "truncated_record.zarr")
    ids = [_complete_run(store, seed) for seed in range(3)]
    record = Path(store) / "runs" / ids[1] / "zarr.json"
    record.write_text(record.read_text()[:300])
    rows.append(("truncated run record (zarr.json)", "others listed, the broken one named",
                 ", ".join(f"{r.status}" for r in list_runs(store))))
    data = tmp / "my_data"
    data.mkdir()
    (data / "notes.txt").write_text("x")
    rows.append(("non-zarr non-empty folder as --store", "refused, folder untouched",
                 _observe(lambda: open_store(str(data))) + f"; folder holds {os.listdir(data)}"))
    return rows


def _first_chunk(run: Path, array: str) -> Path:
    return sorted(p for p in (run / array / "c").rglob("*") if p.is_file())[0]


def _flip(chunk: Path) -> None:
    raw = bytearray(chunk.read_bytes())
    raw[-5] ^= 1
    chunk.write_bytes(bytes(raw))


def hostile_rows(tmp: Path) -> list[Row]:
    from ood_core.base_model.training import read_checkpoint
    from ood_core.errors import ConfigurationError

    marker = tmp / "pwned"

    class Planted:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    folder = tmp / "ckpt"
    folder.mkdir()
    (folder / "state.pt").write_bytes(pickle.dumps({"unet": Planted()}, protocol=2))
    try:
        read_checkpoint(folder)
        observed = "loaded"
    except ConfigurationError as exc:
        observed = f"ConfigurationError ({str(exc).split(': ', 1)[1][:70]}...)"
    return [("planted pickle state.pt in --checkpoints", "refused, no code runs",
             f"{observed}; marker file created: {marker.exists()}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    dev_set = Path(__file__).resolve().parents[1] / os.environ.get("OOD_DEV_DATA", "../shared/data/fits")
    parser.add_argument("--fits-dir", type=Path, default=dev_set)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "in").mkdir()
        rows = input_rows(args.fits_dir, tmp / "in") + store_rows(tmp) + hostile_rows(tmp)
    print("| # | kind | expected | observed |")
    print("|---|------|----------|----------|")
    for number, (kind, expected, observed) in enumerate(rows, 1):
        print(f"| {number} | {kind} | {expected} | {observed.replace('|', '/')} |")


if __name__ == "__main__":
    main()
