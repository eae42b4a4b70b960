"""Thin Prefect tasks over ood_core: they pass paths, store URLs and small configs, never big arrays.

common (GPU tag, logger, retries, progress) | validate (one FITS file) | run (model info, create the run) |
stages (invert, prior, sample, finish) | report (run artifacts) | evaluate (evaluate_run, its summary) |
artifacts (keys, PNG paths, embedded PNGs)
"""

from tasks.artifacts import artifact_key, artifact_path, png_base64
from tasks.common import GPU_TAG
from tasks.evaluate import evaluate_task, evaluation_report_task
from tasks.report import report_task
from tasks.run import create_run_task, model_info
from tasks.stages import execute_as_task, finish_task, invert_task, prior_task, sample_task
from tasks.validate import validate_fits

__all__ = [
    "GPU_TAG",
    "artifact_key",
    "artifact_path",
    "create_run_task",
    "evaluate_task",
    "evaluation_report_task",
    "execute_as_task",
    "finish_task",
    "invert_task",
    "model_info",
    "png_base64",
    "prior_task",
    "report_task",
    "sample_task",
    "validate_fits",
]
