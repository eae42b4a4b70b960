"""`ood run` as a user runs it, under faults (issue 13): a garbled tile-compressed file and names with `[`
among the inputs, a SIGKILL mid-run (no temporary Prefect server may survive it; the run reads as stale,
never as complete), then `ood run --resume` completes it with the bad file set aside and named."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr
import zarr.errors
from made_fits import write_skies
from test_fits_io import write_damaged_tile_compressed

from ood_cli.main import EXIT_OK, EXIT_USAGE
from ood_core.store import StoreError, list_runs, open_run

OOD = Path(sys.executable).parent / "ood"
SMALL = ["--samples", "2", "--steps", "6", "--t0", "300", "--device", "cpu", "--batch-size", "8"]


def ood_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)  # the temporary server's own database, and how the test finds it
    env["OMP_NUM_THREADS"] = "1"  # on a shared 2-core machine two spinning torch threads ran 100x slower
    return env


def server_processes(home: Path, exclude: int | None = None) -> list[int]:
    """Pids of processes started with this PREFECT_HOME (the `ood` command and its server)."""
    marker = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (exclude, os.getpid()):
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def writing_runs(store: Path) -> list[str]:
    """Ids of "writing" runs whose creation is over (the "ingest" stage recorded: arrays made, inputs stored), []
    while the store or the run is still being created: a kill inside creation is another case (such a run can
    never complete and is marked failed on resume, tests/test_faults.py)."""
    try:
        runs = [r.run_id for r in list_runs(str(store)) if r.status == "writing"]
    except StoreError:  # the folder exists, its root metadata not yet
        return []
    created = []
    for run_id in runs:
        try:
            group = zarr.open_group(str(store), path=f"runs/{run_id}", mode="r")
            if "ingest" in dict(group.attrs.get("ood_progress") or {}).get("completed_stages", []):
                created.append(run_id)
        except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
            continue
    return created


def wait_until_gone(home: Path, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := server_processes(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture
def prefect_home(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to find the server process")
    home = tmp_path / "prefect-home"
    home.mkdir()
    yield home
    for pid in server_processes(home):  # never leave a process of ours behind, even when the test fails
        os.kill(pid, signal.SIGKILL)


def test_killed_run_leaves_no_server_reads_as_stale_and_resumes_with_bad_inputs_set_aside(
    tmp_path: Path, prefect_home: Path
) -> None:
    skies = write_skies(tmp_path / "skies", 4)  # demo skies (tests/made_fits.py)
    inputs = tmp_path / "inputs"
    (inputs / "obs[2]").mkdir(parents=True)
    shutil.copy(skies[2], inputs / "cut[1].fits")
    shutil.copy(skies[3], inputs / "obs[2]" / "a.fits")
    garbled = write_damaged_tile_compressed(inputs, "RICE_1")
    good = [str(path) for path in skies[:2]]
    specs = [*good, str(garbled), str(inputs / "cut[1].fits"), str(inputs / "obs[2]")]
    store = tmp_path / "store.zarr"
    ood = subprocess.Popen([str(OOD), "run", *specs, "--store", str(store), *SMALL], cwd=tmp_path,
                           env=ood_env(prefect_home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    # Kill once the run is being written (the server is up, the inputs are stored, the network stages go).
    while time.monotonic() < deadline and ood.poll() is None:
        if writing_runs(store):
            break
        time.sleep(0.2)
    assert ood.poll() is None, "the run ended before it could be killed"
    assert server_processes(prefect_home, exclude=ood.pid), "no temporary server process while the run went"
    ood.send_signal(signal.SIGKILL)
    ood.wait()
    assert wait_until_gone(prefect_home, 20) == []  # the server died with its parent
    [run] = list_runs(str(store))
    assert run.status == "writing" and run.stale
    assert run.problem is not None and "is no longer running" in run.problem

    resumed = subprocess.run([str(OOD), "run", "--resume", run.run_id, "--store", str(store)], cwd=tmp_path,
                             env=ood_env(prefect_home), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == EXIT_OK, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"run        {run.run_id}" in resumed.stdout
    assert f"quarantined {garbled}: image data cannot be decoded" in resumed.stdout
    [done] = list_runs(str(store))
    assert done.run_id == run.run_id and done.status == "complete" and done.n_samples == 2
    ds = open_run(str(store), run.run_id)  # verifies the checksums written at completion
    record = ds.attrs["ood_run"]
    assert sorted(Path(i["path"]).name for i in record["inputs"]) == sorted(
        ["sky_000.fits", "sky_001.fits", "cut[1].fits", "a.fits"])
    assert [(q["path"], q["error"]) for q in record["quarantined"]] == [(str(garbled), "CorruptFitsError")]
    assert ds.sizes["input"] == 4 and record["parameters"]["steps"] == 6
    assert wait_until_gone(prefect_home, 15) == []  # and the resumed run's server ended with it


MAKE_STALE_RUN = """
import os, sys
from ood_core.method.model import cached_model
from ood_core.pipeline import PipelineParameters, prepare_run
params = PipelineParameters(inputs=[sys.argv[1]], store=sys.argv[2], samples=2, steps=6, t0=300, device="cpu",
                            batch_size=8)
print(prepare_run(params, cached_model(params.model, "cpu", "float32")), flush=True)
os._exit(0)  # the writer is gone without a word: its run is stale, its lease held by a dead process
"""


def test_of_two_concurrent_resumes_exactly_one_writes_and_the_other_names_it(
    tmp_path: Path, prefect_home: Path
) -> None:
    write_skies(tmp_path / "skies", 4)
    store = tmp_path / "store.zarr"
    made = subprocess.run([sys.executable, "-c", MAKE_STALE_RUN, str(tmp_path / "skies"), str(store)],
                          env=ood_env(prefect_home), capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    run_id = made.stdout.split()[-1]
    [stale] = list_runs(str(store))
    assert stale.run_id == run_id and stale.stale

    command = [str(OOD), "run", "--resume", run_id, "--store", str(store)]
    started = time.monotonic()
    resumers = [subprocess.Popen(command, cwd=tmp_path, env=ood_env(prefect_home), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    ended: dict[int, tuple[int, float, str, str]] = {}
    while len(ended) < 2 and time.monotonic() - started < 900:
        for k, resumer in enumerate(resumers):
            if k not in ended and resumer.poll() is not None:
                out, err = resumer.communicate()
                ended[k] = (resumer.returncode, time.monotonic() - started, out, err)
        time.sleep(0.2)
    codes = sorted(code for code, *_ in ended.values())
    assert codes == [EXIT_OK, EXIT_USAGE], ended
    winner = next(k for k, (code, *_) in ended.items() if code == EXIT_OK)
    _, loser_seconds, _, loser_err = next(v for v in ended.values() if v[0] == EXIT_USAGE)
    print(f"resumers: winner done after {ended[winner][1]:.1f} s, loser exited after {loser_seconds:.1f} s")
    assert f"run {run_id} is being written by writer " in loser_err
    assert f"(pid {resumers[winner].pid} on " in loser_err  # it names the live writer
    assert loser_seconds < ended[winner][1]  # it stopped before the winner was done, having written nothing
    [done] = list_runs(str(store))
    assert done.status == "complete" and done.n_samples == 2
    attempts = open_run(str(store), run_id).attrs["ood_run"]["attempts"]
    assert [(a["how"], a["outcome"], a["pid"]) for a in attempts][1:] == [
        ("resumed", "complete", resumers[winner].pid)]
    assert attempts[0]["outcome"] == "abandoned" and "no longer running" in attempts[0]["reason"]
