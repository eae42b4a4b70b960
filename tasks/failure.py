"""A run that cannot go on ends with one readable reason and a summary artifact saying what to change.

Expected failures are the ones a person fixes by changing the inputs or the parameters: ood_core's errors
(``OODError``: no usable input, an unusable file, a bad model folder or store) and parameter validation errors.
The flow turns them into a Failed state with the reason as its message (no traceback, and no "Engine execution
exited with unexpected exception" from the worker) and writes the ``<prefix>-summary`` markdown artifact.
Their task-run log lines keep the reason but lose the traceback (:class:`QuietExpectedFailures`). Anything
else is a bug or an outage: it keeps its traceback, and the artifact is written before it propagates.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.exceptions import ParameterTypeError
from prefect.states import Failed
from pydantic import ValidationError

from ood_core.errors import ConfigurationError, InvalidInputError, NoUsableInputError, OODError
from ood_core.pipeline.config import MIN_USABLE_INPUTS, PipelineParameters
from ood_core.pipeline.failures import classify_failure
from ood_core.store.errors import StoreError
from tasks.common import run_logger

EXPECTED_FAILURES: tuple[type[Exception], ...] = (OODError, ValidationError, ParameterTypeError)


def is_expected(exc: BaseException) -> bool:
    """True for the failures a person fixes by changing inputs or parameters."""
    return isinstance(exc, EXPECTED_FAILURES)


ENGINE_EXIT_MESSAGE = "Engine execution exited with unexpected exception"
"""What Prefect's flow-run entrypoint (a worker's flow-run process) logs, with the traceback, whenever a flow run
ends Failed; for an expected failure the flow run's state message already says why."""


class QuietExpectedFailures(logging.Filter):
    """For an expected failure: drops the traceback from a log record (the message keeps the reason), and drops
    the entrypoint's "Engine execution exited with unexpected exception" record altogether."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_expected(record.exc_info[1]):
            if record.msg == ENGINE_EXIT_MESSAGE:
                return False
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_expected_failures() -> None:
    """Install :class:`QuietExpectedFailures` on Prefect's task-run and flow-run loggers (once)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietExpectedFailures) for f in logger.filters):
            logger.addFilter(QuietExpectedFailures())


def failure_reason(exc: BaseException) -> str:
    """One line a person can act on."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}" for e in exc.errors())
        return f"bad parameters: {problems}"
    text = str(exc).strip().splitlines()
    first = text[0].rstrip(":") if text else type(exc).__name__
    return first if isinstance(exc, OODError) else f"{type(exc).__name__}: {first}"


def what_to_change(exc: BaseException) -> list[str]:
    """Advice for the person who started the run."""
    if isinstance(exc, NoUsableInputError):
        if exc.usable == 0:
            return ["None of the inputs could be used: fix or replace the files listed below (each with its "
                    "reason), or point `inputs` at other FITS files, directories or glob patterns."]
        return [f"Only {exc.usable} usable input(s); the method needs at least {exc.needed} "
                f"(default {MIN_USABLE_INPUTS}): add more images of the same domain to `inputs`,",
                "or set `tile` (e.g. 64 or 128) to cut large images into several tiles."]
    if isinstance(exc, InvalidInputError):
        return [f"Fix or remove `{exc.path}` from `inputs`: {exc.reason}."]
    if isinstance(exc, ValidationError):
        return ["Change the parameters named above; the deployment's form shows each one's bounds."]
    if isinstance(exc, StoreError):
        return ["Check `store`: it must be a folder (or fsspec URL) you can write to that is empty or an "
                "ood-synth store."]
    if isinstance(exc, ConfigurationError):
        return ["Change the parameter or model folder the message names."]
    if isinstance(exc, OODError):
        return ["See the reason above; change the inputs or parameters it names."]
    return ["This looks like a bug or an outage, not a problem with your inputs: the flow run's logs hold the "
            "traceback. Retrying the flow run resumes the run from what it committed."]


def failure_markdown(exc: BaseException, params: PipelineParameters | None, run_id: str | None) -> str:
    """The summary artifact of a failed run."""
    lines = [f"# Run failed: {failure_reason(exc)}", "", "## What to change", ""]
    lines += [f"- {advice}" for advice in what_to_change(exc)]
    quarantined = exc.quarantined if isinstance(exc, NoUsableInputError) else []
    if quarantined:
        lines += ["", "## Inputs set aside", "", "| file | reason |", "|---|---|"]
        lines += [f"| `{q.path}` | {q.reason.replace('|', '/')} |" for q in quarantined]
    lines += ["", "## Where", ""]
    if params is not None:
        lines += [f"- inputs: {', '.join(f'`{i}`' for i in params.inputs)}", f"- store: `{params.store}`"]
    if run_id is None:
        lines.append("- nothing was written to the store")
    elif classify_failure(exc).resumable and params is not None:
        lines.append(f"- run `{run_id}` is marked `failed` in the store (readers skip it) and is **resumable**: its "
                     f"committed work is kept; retry this flow run, or `ood run --resume {run_id} --store "
                     f"{params.store}`")
    else:
        lines.append(f"- run `{run_id}` is marked `failed` in the store (readers skip it)")
    return "\n".join(lines) + "\n"


def failure_artifact(exc: BaseException, params: PipelineParameters | None, run_id: str | None,
                     key_prefix: str) -> None:
    """Write the failed run's summary artifact (never raises: the reason still reaches the state)."""
    try:
        create_markdown_artifact(failure_markdown(exc, params, run_id), key=f"{key_prefix}-summary",
                                 description=f"run failed: {failure_reason(exc)}"[:500])
    except Exception as artifact_error:  # an artifact is a courtesy: the failure itself must come through
        run_logger().warning("failure artifact not written: %s", artifact_error)


def failed_run(exc: BaseException, params: PipelineParameters | None, run_id: str | None,
               key_prefix: str = "ood-run") -> State[Any]:
    """Artifact + one log line + the Failed state an expected failure ends the flow run with.

    Calling the flow in Python still raises ``exc`` unchanged (the state carries it as its data).
    """
    failure_artifact(exc, params, run_id, key_prefix)
    reason = failure_reason(exc)
    run_logger().error("run failed: %s", reason)
    return Failed(message=reason, data=exc)
