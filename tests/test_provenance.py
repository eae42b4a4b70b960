"""Provenance helpers: JSON conversion, hashes, environment capture, run ids."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from made_fits import write_skies

from ood_core.store.provenance import (
    environment_info,
    json_safe,
    new_run_id,
    sha256_file,
    strict_json_dumps,
    utc_now_iso,
)


def strict_loads(text: str) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"non-JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


@dataclasses.dataclass
class Shot:
    path: Path
    shape: tuple[int, int]
    psnr: np.float32


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float32(1.5), 1.5),
        (np.int64(7), 7),
        (np.bool_(True), True),
        (float("nan"), None),
        (np.float64(-np.inf), None),
        (np.array([[1, 2], [3, 4]], dtype=np.int16), [[1, 2], [3, 4]]),
        (np.array([0.5, np.nan], dtype=np.float32), [0.5, None]),
        ((1, (2, 3)), [1, [2, 3]]),
        (Path("/data/a.fits"), "/data/a.fits"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05+00:00"),
        (dt.date(2026, 1, 2), "2026-01-02"),
        (np.str_("GLIMPSE"), "GLIMPSE"),
        (None, None),
    ],
)
def test_json_safe_table(value: Any, expected: Any) -> None:
    result = json_safe(value)
    assert result == expected
    assert strict_loads(strict_json_dumps(result)) == expected


def test_json_safe_nested_dataclass_gives_plain_types() -> None:
    record = {"shots": [Shot(Path("x.fits"), (64, 64), np.float32(np.nan))], "seed": np.uint32(3)}
    safe = json_safe(record)
    assert safe == {"shots": [{"path": "x.fits", "shape": [64, 64], "psnr": None}], "seed": 3}
    assert type(safe["seed"]) is int  # type: ignore[index]


def test_json_safe_names_the_key_path_of_what_it_cannot_convert() -> None:
    with pytest.raises(TypeError, match=r"\$\.sampler\.rng: Generator"):
        json_safe({"sampler": {"seed": 1, "rng": np.random.default_rng(0)}})
    with pytest.raises(TypeError, match=r"\$\.inputs\[1\]: set"):
        json_safe({"inputs": ["a", {1, 2}]})
    with pytest.raises(TypeError, match="mapping key 3"):
        json_safe({"ok": {3: "x"}})


def test_strict_json_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        strict_json_dumps({"x": math.nan})
    assert strict_json_dumps({"x": 1.0}) == '{"x": 1.0}'


def test_sha256_file_matches_hashlib_on_a_made_fits_file(tmp_path: Path) -> None:
    path = write_skies(tmp_path, 1, size=100)[0]  # 40,000 data bytes plus the header: not a multiple of the chunk
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk=4096) == expected  # chunking does not change the digest
    other = write_skies(tmp_path / "other", 2, size=100)[1]  # another sky: another digest
    assert sha256_file(other) == hashlib.sha256(other.read_bytes()).hexdigest() != expected


def test_sha256_file_matches_hashlib_on_a_real_fits_file(fits_dir: Path) -> None:
    path = fits_dir / "images" / "nebula_HorseHead_DSS2red.fits"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk=4096) == expected  # chunking does not change the digest
    # MANIFEST.csv records the first 16 hex digits
    assert expected.startswith("c4bcc0bccbadf148")


def test_environment_info_is_strict_json_and_names_versions() -> None:
    info = environment_info()
    assert strict_loads(strict_json_dumps(info)) == info
    assert info["package"] == "ood-synth" and info["version"]
    packages = info["packages"]
    assert packages["numpy"] == np.__version__
    assert set(packages) >= {"torch", "diffusers", "astropy", "zarr", "prefect", "numpy", "xarray"}
    assert info["python"].count(".") == 2
    assert info["git_commit"] is None or len(info["git_commit"].removesuffix("-dirty")) == 40
    assert info["hostname"] and info["platform"]


def test_environment_info_does_not_import_prefect() -> None:
    import subprocess
    import sys

    code = ("import sys; from ood_core.store.provenance import environment_info; environment_info(); "
            "print('prefect' in sys.modules)")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert out.stdout.strip() == "False"


def test_run_ids_sort_by_time_and_are_unique() -> None:
    moment = dt.datetime(2026, 11, 24, 22, 33, 0, 123456, tzinfo=dt.UTC)
    run_id = new_run_id(moment)
    assert run_id.startswith("20261124T223300123456Z-")
    assert len(run_id) == len("20261124T223300123456Z-1a2b3c")
    later = new_run_id(moment + dt.timedelta(microseconds=1))
    assert run_id < later
    # another timezone is converted to UTC first
    assert new_run_id(moment.astimezone(dt.timezone(dt.timedelta(hours=5)))).startswith("20261124T2233")
    assert len({new_run_id(moment) for _ in range(500)}) == 500
    ids = [new_run_id() for _ in range(50)]
    assert [i.split("-")[0] for i in ids] == sorted(i.split("-")[0] for i in ids)


def test_utc_now_iso_parses_as_aware_utc() -> None:
    parsed = dt.datetime.fromisoformat(utc_now_iso())
    assert parsed.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 5
