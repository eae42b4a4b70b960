"""Fault injection (issue 13): SIGKILL real pipeline processes at random moments, N times, and check after
each kill that no run reads as complete that is not, and that every complete run verifies and holds the very
samples of an uninterrupted run.

Each round either starts a new run or resumes a stale one (a run a previous kill left "writing"); a child
process does the whole run (``tests/fault_run_proc.py`` forks it from a process that has the library and
the model loaded, so a round starts in milliseconds) and is SIGKILLed after a random delay drawn over the
time a whole run takes, so kills land in every stage: ingest and run creation, inversion, the prior,
sampling, the completion write. ``OOD_FAULT_KILLS`` (default 10) sets N and ``OOD_FAULT_SEED`` the delays;
each round is printed so a failure can be replayed.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from made_fits import write_skies

from ood_core.store import RunNotCompleteError, audit_store, latest_complete_run_id, list_runs, open_run

DRIVER = Path(__file__).with_name("fault_run_proc.py")
N_KILLS = int(os.environ.get("OOD_FAULT_KILLS", "10"))
SEED = int(os.environ.get("OOD_FAULT_SEED", "0"))
TIMEOUT_S = 300


class Runner:
    """The serving driver: one child process per run, killed or reaped on request."""

    def __init__(self, store: Path, model: Path, inputs: list[str]) -> None:
        self.process = subprocess.Popen([sys.executable, str(DRIVER), str(store), str(model), *inputs],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=_env())
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.done: list[str] = []
        assert self.read("READY")[0] == "READY"

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def read(self, word: str) -> list[str]:
        """Lines up to the next one starting with ``word`` (collecting DONE lines on the way)."""
        while True:
            parts = self.lines.get(timeout=TIMEOUT_S).split()
            assert parts, "the driver ended"
            if parts[0] == "DONE":
                self.done.append(parts[1])
            if parts[0] == word:
                return parts

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def start(self, resume: str | None) -> int:
        self.send(f"RESUME {resume}" if resume else "RUN")
        return int(self.read("PID")[1])

    def reap(self) -> int:
        """Let the driver reap the child; its exit status (negative signal number when killed)."""
        self.send("REAP")
        return int(self.read("EXIT")[2])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]),
            "OMP_NUM_THREADS": "1"}


def check_store(store: Path, reference: dict[str, np.ndarray]) -> dict[str, int]:
    """The invariants after a kill; returns how many runs show each status."""
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
        # Every child is dead after its kill: a "writing" run must read as stale, never as in progress.
        assert run.status == "failed" or run.stale, f"{run.run_id} is {run.status} but not stale"
    complete = [r.run_id for r in runs if r.status == "complete"]
    if complete:
        assert latest_complete_run_id(str(store)) == complete[-1]
    damaged = [c for c in audit_store(str(store)) if not c.ok]
    assert damaged == []
    return counts


def test_random_kills_leave_no_run_that_reads_complete_but_is_not(tmp_path: Path) -> None:
    inputs = [str(p) for p in write_skies(tmp_path / "inputs", 4)]  # demo skies (tests/made_fits.py)
    store, model = tmp_path / "store.zarr", tmp_path / "tiny-model"
    subprocess.run([sys.executable, str(DRIVER), "--make-model", str(model)], check=True, env=_env())
    runner = Runner(store, model, inputs)
    try:
        # An uninterrupted run: its samples are what every complete run must hold; its duration scales the kills.
        began = time.monotonic()
        runner.start(None)
        runner.read("DONE")
        duration = time.monotonic() - began
        assert runner.reap() == 0
        reference_ds = open_run(str(store), runner.done[-1], chunks=None)
        reference = {name: reference_ds[name].values for name in ("samples", "samples_physical", "sample_seed")}

        rng = random.Random(SEED)
        rounds: list[str] = []
        interrupted = 0
        for index in range(N_KILLS):
            stale = [r.run_id for r in list_runs(str(store)) if r.stale]
            resume = rng.choice(stale) if stale and index % 2 else None
            delay = rng.uniform(0.0, 1.1 * duration)
            pid = runner.start(resume)
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still our child's, alive or a zombie
            status = runner.reap()
            counts = check_store(store, reference)
            interrupted += status == -signal.SIGKILL and counts.get("stale", 0) > 0
            rounds.append(f"round {index}: resume={resume} kill at {delay:.2f}s of {duration:.2f}s, "
                          f"exit {status} -> {counts}")
            print(rounds[-1])
        # Kills must have interrupted runs, else this test proves nothing.
        assert interrupted >= 3, "too few kills interrupted a run:\n" + "\n".join(rounds)
        # Every stale run resumed to the end holds the same samples as the uninterrupted run.
        for run_id in [r.run_id for r in list_runs(str(store)) if r.stale]:
            runner.start(run_id)
            print(f"resumed {run_id} to the end: exit {runner.reap()}")
        counts = check_store(store, reference)
        print(f"final store: {counts}")
        for run in list_runs(str(store)):
            if run.status == "failed":  # a resume that could not go on says why; the run is never read
                print(f"failed {run.run_id}: {run.problem}")
        assert counts.get("stale", 0) == 0 and counts["complete"] >= 2
    finally:
        runner.close()
