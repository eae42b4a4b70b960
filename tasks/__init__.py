"""Thin Prefect tasks over ood_core: they pass paths, store URLs and small configs, never big arrays."""

from tasks.common import GPU_TAG, cached_model
from tasks.ingest import create_run_task, model_info, validate_fits
from tasks.report import report_task
from tasks.stages import fail_task, finish_task, invert_task, prior_task, sample_task

__all__ = [
    "GPU_TAG",
    "cached_model",
    "create_run_task",
    "fail_task",
    "finish_task",
    "invert_task",
    "model_info",
    "prior_task",
    "report_task",
    "sample_task",
    "validate_fits",
]
