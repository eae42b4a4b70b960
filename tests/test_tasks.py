"""Task-level pieces without a Prefect server: validation records, retry rules, run names (report pieces:
test_report.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from made_fits import write_skies
from prefect.states import Completed, Failed

from flows.naming import run_name
from ood_core.errors import NotFitsError, NoUsableInputError, TruncatedFitsError
from tasks.common import GPU_TAG, retry_on_io_error
from tasks.stages import finish_task, invert_task, prior_task, sample_task
from tasks.validate import expand, validate_fits


def test_validate_fits_records_good_and_bad_files(tmp_path: Path) -> None:
    [good] = write_skies(tmp_path / "good", 1)
    record = validate_fits.fn(str(good), min_size=64)
    assert record["ok"] and len(record["sha256"]) == 64 and record["shape"] == [128, 128]
    small = validate_fits.fn(str(good), min_size=256)
    assert not small["ok"] and small["error"] == "ImageTooSmallError" and "256" in small["reason"]
    text = tmp_path / "notes.fits"
    text.write_text("not a FITS file")
    bad = validate_fits.fn(str(text))
    assert not bad["ok"] and bad["error"] == "NotFitsError" and bad["reason"]


def test_expand_lists_unmatched_specs_as_quarantined(tmp_path: Path) -> None:
    written = write_skies(tmp_path / "skies", 3)
    paths, unmatched = expand([str(tmp_path / "skies" / "sky_*.fits"), str(tmp_path / "nothing_*.fits")])
    assert paths == [str(p) for p in written]
    assert len(unmatched) == 1 and "nothing_" in unmatched[0]["path"] and unmatched[0]["reason"]


@pytest.mark.parametrize(
    ("error", "retry"),
    [(OSError("disk hiccup"), True), (TimeoutError("slow store"), True), (ConnectionError("reset"), True),
     (NotFitsError("a.fits", "not FITS"), False), (TruncatedFitsError("b.fits", "short"), False),
     (NoUsableInputError([]), False), (ValueError("bad parameter"), False)],
)
def test_retries_only_transient_io_errors(error: Exception, retry: bool) -> None:
    assert retry_on_io_error(None, None, Failed(data=error)) is retry  # type: ignore[arg-type]


def test_no_retry_of_a_completed_state() -> None:
    assert retry_on_io_error(None, None, Completed(data=1)) is False  # type: ignore[arg-type]


def test_network_stages_carry_the_gpu_tag_and_bookkeeping_does_not() -> None:
    for t in (invert_task, prior_task, sample_task):
        assert GPU_TAG in t.tags and t.retries == 2
    assert GPU_TAG not in finish_task.tags
    assert validate_fits.retries == 2 and validate_fits.retry_condition_fn is retry_on_io_error


def test_no_usable_input_error_survives_pickling() -> None:
    import pickle

    from ood_core.errors import QuarantinedInput

    error = NoUsableInputError([QuarantinedInput("a.fits", "not FITS", "NotFitsError")])
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, NoUsableInputError) and copy.quarantined[0].path == "a.fits" and "a.fits" in str(copy)


def test_run_name_outside_a_run_is_the_prefix() -> None:
    name = run_name("pipeline", "seed", "samples")
    assert name() == "pipeline"
