"""Heartbeat of a run being written: who writes it and when it was last seen alive.

A "writing" run carries ``heartbeat = {"time", "host", "pid"}`` in its record. The writer refreshes it on
every save and from a daemon thread every :data:`HEARTBEAT_INTERVAL_S` seconds, so long stages (inversion,
sampling) keep it fresh. A reader calls a writing run *stale* when its writer's process is gone (same
host, pid not running) or when the heartbeat is older than :data:`STALE_AFTER_S`: a killed run then reads
as dead rather than in progress, and ``ood run --resume ID`` can continue it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zarr

from ood_core.store.provenance import utc_now_iso

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 30.0
STALE_AFTER_S = 180.0
"""Six missed heartbeats: a writing run whose heartbeat is older than this is shown as stale."""

RECORD_LOCK = threading.RLock()
"""Serializes run-record writes in this process (a writer's saves and its heartbeat thread)."""


def heartbeat_now() -> dict[str, Any]:
    """This process's heartbeat: time (UTC, ISO), host name and pid."""
    return {"time": utc_now_iso(), "host": socket.gethostname(), "pid": os.getpid()}


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie its parent has not reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def stale_reason(record: Mapping[str, Any], *, stale_after: float = STALE_AFTER_S,
                 now: datetime | None = None) -> str | None:
    """Why a "writing" run looks dead, or None while it looks alive (or is not writing)."""
    if record.get("status") != "writing":
        return None
    beat = record.get("heartbeat")
    beat = beat if isinstance(beat, Mapping) else {}
    pid, host = beat.get("pid"), beat.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not pid_running(pid):
        return f"its writer (pid {pid} on {host}) is no longer running"
    last = _parse_time(beat.get("time")) or _parse_time(record.get("started"))
    if last is None:
        return "it has no heartbeat and no start time"
    age = ((now or datetime.now(UTC)) - last).total_seconds()
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s (last from pid {pid} on {host})"
    return None


def beat(group: zarr.Group, attr: str) -> bool:
    """Refresh the heartbeat in the run record as stored; False when the run is no longer writing."""
    with RECORD_LOCK:
        fresh = zarr.open_group(group.store, path=group.path, mode="r+", zarr_format=3)
        record = fresh.attrs.get(attr)
        if not isinstance(record, dict) or record.get("status") != "writing":
            return False
        fresh.update_attributes({attr: {**record, "heartbeat": heartbeat_now()}})
        return True


def _beat_until(group: zarr.Group, attr: str, stop: threading.Event, interval: float) -> None:
    missed = 0
    while not stop.wait(interval):
        try:
            if not beat(group, attr):
                return
            missed = 0
        except Exception as exc:  # a missed beat is not worth killing the run for; the next one may land
            missed += 1
            log.log(logging.WARNING if missed == 1 else logging.DEBUG, "heartbeat of %s not written (%d in a "
                    "row): %s", group.path, missed, exc)


def start_heartbeat(owner: object, group: zarr.Group, attr: str,
                    interval: float = HEARTBEAT_INTERVAL_S) -> threading.Event:
    """Beat for ``group`` from a daemon thread until the returned event is set or ``owner`` is collected."""
    stop = threading.Event()
    thread = threading.Thread(target=_beat_until, args=(group, attr, stop, interval),
                              name=f"heartbeat {group.path}", daemon=True)
    thread.start()
    weakref.finalize(owner, stop.set)
    return stop
