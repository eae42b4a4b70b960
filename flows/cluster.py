"""The Dask clusters the flows spread work over: an existing scheduler given by address (for example a
``dask-cuda`` cluster with one worker per GPU), or a local cluster of worker processes started for the flow run."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, cast
from urllib.parse import urlsplit

from prefect.task_runners import TaskRunner
from prefect_dask.task_runners import DaskTaskRunner


def dask_runner(address: str | None, workers: int, *, processes: bool = True) -> TaskRunner[Any]:
    """A DaskTaskRunner on the scheduler at ``address``, or on a new local cluster of ``workers`` single-threaded
    workers (processes unless ``processes`` is False)."""
    if address:
        return cast(TaskRunner[Any], DaskTaskRunner(address=address))
    return cast(TaskRunner[Any], DaskTaskRunner(cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": processes, "dashboard_address": None,
    }))


SCHEDULER_WAIT_S = float(os.environ.get("OOD_SCHEDULER_WAIT_S", "120"))
"""How long a flow waits for a lost Dask scheduler to come back at its address before the run fails (resumable)."""


class SchedulerLostError(ConnectionError):
    """The Dask scheduler went away and did not come back in time; the run can be resumed."""


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlsplit(address if "://" in address else f"tcp://{address}")
    return parsed.hostname or "127.0.0.1", int(parsed.port or 8786)


def scheduler_reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts connections at the scheduler's address now."""
    try:
        with socket.create_connection(_host_port(address), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_scheduler(address: str, deadline: float, every: float = 1.0) -> bool:
    """Poll the scheduler's address until it accepts connections (True) or ``deadline`` (time.monotonic) passes."""
    while time.monotonic() < deadline:
        if scheduler_reachable(address):
            return True
        time.sleep(every)
    return scheduler_reachable(address)
