"""The attempts at writing a run, as its provenance lists them (``attempts``; issue 28).

Each attempt is one writer's spell on the run, from its lease (:mod:`.lease`): which generation, writer, host and
pid, how it began (created, resumed, retried), when, and how it ended (complete, failed with its error and
whether that is resumable, or abandoned: found dead by the next writer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ood_core.store.lease import Lease
from ood_core.store.provenance import utc_now_iso


def begin(lease: Lease, how: str, attempts: Sequence[Mapping[str, Any]] = (), *,
          found: str | None = None) -> list[dict[str, Any]]:
    """``attempts`` with the last one closed as abandoned (when it never ended; ``found``: why it was taken for
    dead) and a new one begun by ``lease``."""
    listed = [dict(a) for a in attempts]
    if listed and listed[-1].get("outcome") is None:
        listed[-1].update(ended=utc_now_iso(), outcome="abandoned", reason=found or "its writer stopped")
    listed.append({"attempt": len(listed) + 1, "how": how, "lease": lease.generation, "writer": lease.writer,
                   "host": lease.host, "pid": lease.pid, "started": utc_now_iso(), "ended": None, "outcome": None})
    return listed


def end(attempts: Sequence[Mapping[str, Any]], outcome: str, **details: Any) -> list[dict[str, Any]]:
    """``attempts`` with the current (last) one ended: ``outcome`` (complete, failed) and details."""
    listed = [dict(a) for a in attempts]
    if listed and listed[-1].get("outcome") is None:
        listed[-1].update(ended=utc_now_iso(), outcome=outcome, **details)
    return listed
