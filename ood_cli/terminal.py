"""What the `ood` command shows while it works: how much it says, a progress bar, and other libraries' noise.

Verbosity: ``--quiet`` shows errors and the result only; the default adds warnings and stage progress (a rich
progress bar when stdout is a terminal, plain lines on stderr otherwise); ``--verbose`` adds Prefect's flow
and task logs and third-party warnings. Progress comes from the stage progress hooks (``tasks.common``
``PROGRESS_LISTENERS``): invert and reference latents per network evaluation, the prior fit, samples per batch.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from types import TracebackType
from typing import Any, Literal

Verbosity = Literal["quiet", "normal", "verbose"]

STAGE_LABELS = {
    "bandwidth_scan": "t0 scan",
    "invert": "invert inputs",
    "reference": "reference latents",
    "prior_fit": "prior fit",
    "sample": "samples",
}
LINE_EVERY_S = 5.0
"""Plain progress lines (stdout not a terminal): at most one per stage every this many seconds, and the last."""

_PREFECT_LEVELS = {"quiet": "ERROR", "normal": "WARNING", "verbose": "INFO"}
_NOISY_MODULES = ("sklearn", "diffusers", "torch", "huggingface_hub", "transformers", "photutils", "dask", "zarr",
                  "numcodecs", "xarray", "h5netcdf", "h5py", "astropy", "reproject", "scipy", "skimage", "matplotlib")
"""Libraries whose warnings (attributed to their own modules) only --verbose shows: a user sees the project's
own messages, which say what to change in the project's words."""


def configure_output(verbosity: Verbosity) -> None:
    """Set Prefect's log level and silence third-party noise; call before Prefect or diffusers is imported.

    PREFECT_LOGGING_LEVEL set by the user wins unless --quiet or --verbose asks otherwise.
    """
    if verbosity != "normal" or "PREFECT_LOGGING_LEVEL" not in os.environ:
        os.environ["PREFECT_LOGGING_LEVEL"] = _PREFECT_LEVELS[verbosity]
    # The temporary server's usage telemetry: without network it logs errors and tracebacks on every run.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if verbosity == "verbose":
        return
    for module in _NOISY_MODULES:  # sklearn's convergence/future warnings and the like
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # "accelerate was not found" and friends
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    if verbosity == "quiet":
        logging.getLogger("ood_core").setLevel(logging.ERROR)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


class TerminalProgress:
    """A progress listener: rich bars on a terminal, throttled lines on stderr otherwise, nothing when quiet."""

    def __init__(self, verbosity: Verbosity, bar: bool | None = None) -> None:
        self.enabled = verbosity != "quiet"
        self.bar = stdout_is_terminal() if bar is None else bar
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_line: dict[str, float] = {}

    def __enter__(self) -> TerminalProgress:
        from tasks.common import PROGRESS_LISTENERS

        if self.enabled and self.bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=sys.stdout), transient=False,
            )
            self._progress.start()
        if self.enabled:
            PROGRESS_LISTENERS.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        from tasks.common import PROGRESS_LISTENERS

        if self in PROGRESS_LISTENERS:
            PROGRESS_LISTENERS.remove(self)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        label = STAGE_LABELS.get(stage, stage)
        if self._progress is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._progress.add_task(label, total=max(total, 1))
            self._progress.update(self._tasks[stage], completed=done, total=max(total, 1))
            return
        now = time.monotonic()
        if done < total and now - self._last_line.get(stage, -LINE_EVERY_S) < LINE_EVERY_S:
            return
        self._last_line[stage] = now
        percent = 100.0 * done / total if total else 100.0
        print(f"ood: {label}: {done}/{total} ({percent:.0f}%)", file=sys.stderr, flush=True)
