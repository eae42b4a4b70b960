"""Shared plumbing of the tasks: the GPU tag, the run logger, retry rules, progress reporting."""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

from ood_core.errors import OODError
from ood_core.pipeline.sample_stage import ProgressHook

GPU_TAG = "gpu"
"""Tag of the tasks that run the network; `prefect concurrency-limit create gpu 1` holds one per GPU."""


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow/task run, the module logger outside (e.g. ``task.fn`` in tests)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("tasks")


def retry_on_io_error(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry transient I/O failures (file systems, object stores); never bad input or bad parameters."""
    try:
        state.result()
    except OODError:
        return False
    except (OSError, TimeoutError, ConnectionError):
        return True
    except Exception:
        return False
    return False


LIBRARY_LOGGERS = ("ood_core",)
"""Loggers of the science library whose records (warnings: quarantined files, mixed BUNIT) belong in the run's
logs in the UI. The same as ``PREFECT_LOGGING_EXTRA_LOGGERS=ood_core``, without the "no flow run id" warnings
that setting gives outside runs."""


class RunContextLogHandler(APILogHandler):
    """Prefect's API log handler for library loggers: sends the records emitted inside a flow or task run."""

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


def send_library_logs_to_runs() -> None:
    """Attach :class:`RunContextLogHandler` to :data:`LIBRARY_LOGGERS` once (not where Prefect's own
    ``PREFECT_LOGGING_EXTRA_LOGGERS`` already sends them)."""
    extra = set(PREFECT_LOGGING_EXTRA_LOGGERS.value() or [])
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if name not in extra and not any(isinstance(h, RunContextLogHandler) for h in logger.handlers):
            logger.addHandler(RunContextLogHandler())


PROGRESS_LISTENERS: list[ProgressHook] = []
"""Extra receivers of every stage progress report in this process (the ``ood`` command's progress bar)."""


class ProgressReporter:
    """A ProgressHook that updates one Prefect progress artifact per stage and logs, at most every ``every`` s."""

    def __init__(self, run_label: str, every: float = 2.0) -> None:
        self.run_label = run_label
        self.every = every
        self._artifacts: dict[str, Any] = {}
        self._last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        for listener in PROGRESS_LISTENERS:
            listener(stage, done, total)
        percent = 100.0 * done / total if total else 100.0
        now = time.monotonic()
        if done < total and now - self._last.get(stage, 0.0) < self.every:
            return
        self._last[stage] = now
        key = stage.replace("_", "-")
        try:
            if stage not in self._artifacts:
                self._artifacts[stage] = create_progress_artifact(
                    progress=percent, key=f"progress-{key}", description=f"{stage} of run {self.run_label}"
                )
            else:
                update_progress_artifact(self._artifacts[stage], progress=percent)
        except Exception as exc:  # progress is a courtesy: never fail a stage for it
            run_logger().debug("progress artifact not updated: %s", exc)
        run_logger().info("%s: %d/%d (%.0f%%)", stage, done, total, percent)


def progress_hook(run_id: str) -> ProgressHook:
    """The progress hook the stage tasks pass to ood_core."""
    return ProgressReporter(run_id)
