"""Validation task: read and check one FITS file (one task per file, so a Dask cluster spreads them)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ood_core.errors import InvalidInputError, QuarantinedInput
from ood_core.io.fits import expand_inputs, read_fits_image, unmatched_inputs
from tasks.common import retry_on_io_error, run_logger


def expand(specs: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Files matched by paths/directories/globs, and the specs that matched nothing (as quarantine records)."""
    return [str(p) for p in expand_inputs(specs)], [q.to_dict() for q in unmatched_inputs(specs)]


@task(name="validate-fits", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_on_io_error,
      cache_policy=NO_CACHE, task_run_name="validate-{path}")
def validate_fits(path: str, hdu: int | None = None, min_size: int = 1) -> dict[str, Any]:
    """Read and validate one FITS file; returns a small record (ok + sha256, or the quarantine reason)."""
    try:
        image = read_fits_image(path, hdu=hdu, min_size=min_size)
    except InvalidInputError as exc:
        run_logger().warning("quarantined %s", exc)
        return {"path": str(path), "ok": False, **QuarantinedInput.from_error(exc).to_dict()}
    return {"path": str(path), "ok": True, "sha256": image.sha256, "shape": list(image.shape),
            "hdu": image.hdu_index, "BUNIT": image.header.get("BUNIT")}
