"""Thin Prefect tasks over ood_core: they pass paths, store URLs and small configs, never big arrays.

common (GPU tag, logger, retries, progress) | validate (one FITS file) | run (model info, create the run) |
stages (invert, prior, sample, finish) | report (run artifacts)
"""

from tasks.common import GPU_TAG
from tasks.report import report_task
from tasks.run import create_run_task, model_info
from tasks.stages import execute_as_task, finish_task, invert_task, prior_task, sample_task
from tasks.validate import validate_fits

__all__ = [
    "GPU_TAG",
    "create_run_task",
    "execute_as_task",
    "finish_task",
    "invert_task",
    "model_info",
    "prior_task",
    "report_task",
    "sample_task",
    "validate_fits",
]
