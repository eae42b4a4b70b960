"""Shared plumbing of the tasks: the GPU tag, the run logger, retry rules, progress reporting."""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import MissingContextError

from ood_core.errors import OODError
from ood_core.pipeline.stages import ProgressHook

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


class ProgressReporter:
    """A ProgressHook that updates one Prefect progress artifact per stage and logs, at most every ``every`` s."""

    def __init__(self, run_label: str, every: float = 2.0) -> None:
        self.run_label = run_label
        self.every = every
        self._artifacts: dict[str, Any] = {}
        self._last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
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
