"""One seed per run, named children: every random stream of a run derives from the run's seed and a name.

``child_seed(seed, "reference")`` replaces ad-hoc offsets such as ``seed + 1``: streams cannot collide by
accident (seed 1's candidates and seed 0's references would have shared ``seed + 1``), and the name says what
the stream is for. Candidate draws keep their own per-candidate stream (:func:`ood_core.method.sampler.candidate_seed`).
"""

from __future__ import annotations

import hashlib

STREAMS = ("reference", "evaluation-anchor", "baseline")
"""Named sub-streams in use (documentation; any name works)."""


def child_seed(seed: int, stream: str) -> int:
    """A non-negative seed below 2**62 for the sub-stream ``stream`` of a run with ``seed`` (sha256 of both)."""
    if not stream:
        raise ValueError("child_seed needs a non-empty stream name, e.g. child_seed(seed, 'reference')")
    digest = hashlib.sha256(f"ood-synth/{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2
