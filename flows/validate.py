"""Validate flow: check and hash many FITS files in parallel (on a Dask cluster via prefect-dask by default).

A standalone check of a folder of candidate inputs (deployment ``validate``); the pipeline itself reads its
inputs once, in its create-run task.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import TaskRunner
from pydantic import BaseModel, ConfigDict, Field

from flows.cluster import dask_runner as cluster_runner
from flows.naming import run_name
from ood_core.errors import NoUsableInputError, QuarantinedInput
from tasks.validate import expand, validate_fits


class ValidateParameters(BaseModel):
    """What to validate and where to run the validation."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1, description="FITS files, directories or glob patterns")
    hdu: int | None = Field(default=None, ge=0, description="HDU index to read (default: first image HDU)")
    min_size: int = Field(default=1, ge=1, le=8192, description="smallest usable image side in pixels")
    use_dask: bool = Field(default=True, description="validate on a Dask cluster (else in threads of this process)")
    dask_address: str | None = Field(
        default=None, description="address of an existing Dask scheduler (tcp://host:8786); empty: a local cluster"
    )
    dask_workers: int = Field(default=2, ge=1, le=256, description="workers of the local Dask cluster")
    dask_processes: bool = Field(default=True, description="local cluster workers are processes (else threads)")


def dask_runner(params: ValidateParameters) -> TaskRunner[Any]:
    """A DaskTaskRunner on the given scheduler, or on a new local cluster."""
    return cluster_runner(params.dask_address, params.dask_workers, processes=params.dask_processes)


@flow(name="validate-files")
def validate_files(paths: list[str], hdu: int | None, min_size: int) -> list[dict[str, Any]]:
    """One validate-fits task per file on this flow's task runner; returns their records in input order."""
    futures = validate_fits.map(paths, hdu=unmapped(hdu), min_size=unmapped(min_size))
    return [future.result() for future in futures]


def quarantine_records(records: list[dict[str, Any]], unmatched: list[dict[str, str]]) -> list[dict[str, str]]:
    """Quarantine entries (path, reason, error) of the unmatched specs and the files that failed validation."""
    bad = [{"path": r["path"], "reason": r["reason"], "error": r["error"]} for r in records if not r["ok"]]
    return [*unmatched, *bad]


@flow(name="validate-inputs", flow_run_name=run_name("validate", "min_size", "dask_address"),
      validate_parameters=True)
def validate_flow(params: ValidateParameters) -> dict[str, Any]:
    """Validate every input; returns usable paths, per-file records and quarantined files with reasons.

    Raises NoUsableInputError (with every reason) when nothing is usable.
    """
    logger = get_run_logger()
    paths, unmatched = expand(params.inputs)
    records: list[dict[str, Any]] = []
    if paths and params.use_dask:
        runner = dask_runner(params)
        records = validate_files.with_options(task_runner=runner)(paths, params.hdu, params.min_size)
    elif paths:  # this flow's own (thread pool) task runner: no extra subflow run
        futures = validate_fits.map(paths, hdu=unmapped(params.hdu), min_size=unmapped(params.min_size))
        records = [future.result() for future in futures]
    quarantined = quarantine_records(records, unmatched)
    usable = [r["path"] for r in records if r["ok"]]
    logger.info("validate: %d usable, %d quarantined", len(usable), len(quarantined))
    if not usable:
        raise NoUsableInputError([QuarantinedInput(q["path"], q["reason"], q["error"]) for q in quarantined])
    return {"usable": usable, "records": records, "quarantined": quarantined}
