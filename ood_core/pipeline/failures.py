"""Why a run failed, and whether it can be taken up again (issue 28).

A run *refused* for its inputs or its settings stays failed: running it again would fail again, and the message
says what to change. Every other failure is the infrastructure's (a lost Dask scheduler or worker, a store I/O
error, a killed process, the device out of memory) or a bug: the inputs and settings are fine, the committed work
is kept, and ``ood run --resume RUN --store STORE`` (or a retry of the flow run) goes on from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from ood_core.errors import ConfigurationError, InvalidInputError, NoUsableInputError
from ood_core.store.errors import StoreIntegrityError, StoreSchemaError

REFUSALS: tuple[type[BaseException], ...] = (
    NoUsableInputError, InvalidInputError, ConfigurationError, ValidationError,  # the inputs or the settings
    StoreIntegrityError, StoreSchemaError,  # damaged data is never written on
)
"""Failures that a resume would repeat: the run stays failed."""


@dataclass(frozen=True)
class Failure:
    """How a run ended badly: the error as one line, and whether the run can be resumed (and why)."""

    error: str
    resumable: bool
    kind: str

    def as_record(self) -> dict[str, object]:
        """The provenance form (``failure``)."""
        return {"error": self.error, "resumable": self.resumable, "kind": self.kind}


def _kind(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).lower()
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    if "out of memory" in text or name == "OutOfMemoryError":
        return "device out of memory"
    if "scheduler" in text or name in ("FutureCancelledError", "CancelledError", "CommClosedError",
                                       "KilledWorker", "TimeoutError"):
        return "cluster"
    if isinstance(exc, OSError):
        return "store or file I/O"
    return "unexpected (a bug or an outage)"


def classify_failure(exc: BaseException) -> Failure:
    """Refused (inputs, settings, damaged data: not resumable) or the infrastructure's (resumable)."""
    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, REFUSALS):
        return Failure(error=error, resumable=False, kind="refused: inputs or settings")
    return Failure(error=error, resumable=True, kind=_kind(exc))
