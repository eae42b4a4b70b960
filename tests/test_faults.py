"""Fault injection (issue 13): kill real pipeline processes at random moments, N times, and check after each
kill that no run reads as complete that is not, and that every complete run verifies and holds the very
samples of an uninterrupted run.

Each round either starts a new run or resumes a stale one (a run a previous kill left "writing"), then
SIGKILLs the process after a random delay drawn over the time a whole run takes, so kills land in every
stage: creating the run, inversion, the prior, sampling, the completion write. ``OOD_FAULT_KILLS`` (default
10) sets N and ``OOD_FAULT_SEED`` the delays; the test prints each round so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ood_core.store import (
    RunNotCompleteError,
    audit_store,
    latest_complete_run_id,
    list_runs,
    open_run,
)

DRIVER = Path(__file__).with_name("fault_run_proc.py")
N_KILLS = int(os.environ.get("OOD_FAULT_KILLS", "10"))
SEED = int(os.environ.get("OOD_FAULT_SEED", "0"))
ROUND_TIMEOUT_S = 300


def start(store: Path, inputs: list[str], resume: str | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, str(DRIVER), str(store), *inputs, *(["--resume", resume] if resume else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def next_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line the driver prints ("" when it exits first)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else ""


def check_store(store: Path, reference: dict[str, np.ndarray]) -> dict[str, int]:
    """The invariants after a kill; returns how many runs have each status."""
    runs = list_runs(str(store))
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.shown_status] = counts.get(run.shown_status, 0) + 1
        assert run.status != "broken", f"{run.run_id}: {run.problem}"
        if run.status == "complete":
            ds = open_run(str(store), run.run_id, chunks=None)  # verifies every checksum
            for name, values in reference.items():
                np.testing.assert_array_equal(ds[name].values, values, err_msg=f"{run.run_id}/{name}")
            continue
        with pytest.raises(RunNotCompleteError):
            open_run(str(store), run.run_id)
        # Every process is dead after its kill: a "writing" run must read as stale, never as in progress.
        assert run.status == "failed" or run.stale, f"{run.run_id} is {run.status} but not stale"
    complete = [r.run_id for r in runs if r.status == "complete"]
    if complete:
        assert latest_complete_run_id(str(store)) == complete[-1]
    assert all(check.ok for check in audit_store(str(store))), [c for c in audit_store(str(store)) if not c.ok]
    return counts


def test_random_kills_leave_no_run_that_reads_complete_but_is_not(fits_dir: Path, tmp_path: Path) -> None:
    inputs = sorted(str(p) for p in (fits_dir / "cutouts_128").glob("glimpse_*.fits"))[:4]
    store = tmp_path / "store.zarr"

    # An uninterrupted run: its samples are what every complete run must hold; its duration scales the kills.
    whole = start(store, inputs)
    assert next_line(whole, ROUND_TIMEOUT_S) == "READY"
    began = time.monotonic()
    done = next_line(whole, ROUND_TIMEOUT_S)
    duration = time.monotonic() - began
    assert whole.wait(timeout=60) == 0 and done.startswith("DONE"), done
    reference_ds = open_run(str(store), done.split()[1], chunks=None)
    reference = {name: reference_ds[name].values for name in ("samples", "samples_physical", "sample_seed")}

    rng = random.Random(SEED)
    rounds = []
    for index in range(N_KILLS):
        stale = [r.run_id for r in list_runs(str(store)) if r.stale]
        resume = rng.choice(stale) if stale and index % 2 else None
        process = start(store, inputs, resume)
        ready = next_line(process, ROUND_TIMEOUT_S)
        delay = rng.uniform(0.0, 1.1 * duration)
        if ready == "READY":
            time.sleep(delay)
        outcome = "killed" if process.poll() is None else f"exited {process.returncode}"
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        counts = check_store(store, reference)
        rounds.append(f"round {index}: resume={resume} delay={delay:.2f}s of {duration:.2f}s {outcome} -> {counts}")
        print(rounds[-1])

    # A stale run resumed to the end holds the same samples as the uninterrupted run.
    stale = [r.run_id for r in list_runs(str(store)) if r.stale]
    if stale:
        process = start(store, inputs, stale[-1])
        lines = [next_line(process, ROUND_TIMEOUT_S) for _ in range(2)]
        process.wait(timeout=60)
        print(f"resumed {stale[-1]} to the end: {lines}")
        if lines[-1].startswith("DONE"):
            assert lines[-1].split()[1] == stale[-1]
    counts = check_store(store, reference)
    print(f"final store: {counts}")
    killed = sum("killed" in line for line in rounds)
    assert killed >= min(N_KILLS, 10) // 2, "most rounds should be killed mid-run, not finish first:\n" + "\n".join(
        rounds)
