"""Deployments against a real local Prefect server started here (loopback only, temporary PREFECT_HOME).

`prefect deploy --all` from prefect.yaml, a deployment run created through the API (as the UI does) and
executed by a process worker, the scheduled inbox deployment's idempotence, and parameter bounds enforced by
the deployments' schemas. Set OOD_SKIP_SERVER_TESTS=1 to skip this module where no server can start.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from made_fits import write_skies
from prefect_server import REPO, Server, running_server

from ood_core.store import list_runs, open_run
from ood_core.store.schema import validate_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("OOD_SKIP_SERVER_TESTS") == "1", reason="OOD_SKIP_SERVER_TESTS=1"),
]

WORKER_TIMEOUT = 420.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`prefect server start` on 127.0.0.1 with a temporary PREFECT_HOME; the in-process client points at it."""
    with running_server(tmp_path_factory.mktemp("prefect_home")) as srv:
        yield srv


def _deployment_names() -> list[str]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return [d["name"] for d in spec["deployments"]]


@pytest.fixture(scope="module")
def deployed(server: Server) -> dict[str, Any]:
    """Work pools, the GPU concurrency limit, then `prefect deploy --all`."""
    server.cli("work-pool", "create", "cpu", "--type", "process")
    server.cli("work-pool", "create", "gpu", "--type", "process")
    server.cli("concurrency-limit", "create", "gpu", "1")
    if (REPO / "flows" / "evaluate.py").is_file():
        done = server.cli("deploy", "--all", timeout=300)
        missing_evaluate = False
    else:  # flows/evaluate.py is written by another module's author; deploy everything else meanwhile
        names = [n for n in _deployment_names() if n != "evaluate"]
        done = server.cli("deploy", *[arg for n in names for arg in ("--name", n)], timeout=300)
        missing_evaluate = True
    return {"output": done.stdout + done.stderr, "missing_evaluate": missing_evaluate}


def _client_call(fn: Any) -> Any:
    from prefect.client.orchestration import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(go())


def _deployment(flow_name: str, name: str) -> Any:
    return _client_call(lambda c: c.read_deployment_by_name(f"{flow_name}/{name}"))


def _run_worker(server: Server, pool: str, flow_run_id: Any, attempts: int = 3) -> tuple[Any, str]:
    """`prefect worker start --run-once` until the flow run is final (the scheduler may have queued a cron run of
    the same pool first, which the worker then takes); returns the flow run and the workers' output."""
    output = ""
    for _ in range(attempts):
        done = server.cli("worker", "start", "--pool", pool, "--run-once", "--limit", "1", "--type", "process",
                          timeout=WORKER_TIMEOUT, check=False)
        output += done.stdout[-4000:] + done.stderr[-4000:]
        flow_run = _client_call(lambda c: c.read_flow_run(flow_run_id))
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run, output
    return flow_run, output


def _copy_inputs(folder: Path, count: int = 4, broken: bool = True) -> Path:
    write_skies(folder, count)  # demo skies (tests/made_fits.py)
    if broken:
        (folder / "broken.fits").write_text("not a FITS file")
    return folder


SMALL = {"samples": 2, "steps": 6, "t0": 400, "reference_count": 4, "batch_size": 8, "device": "cpu", "seed": 1}


def test_every_deployment_in_prefect_yaml_is_deployed(deployed: dict[str, Any], server: Server) -> None:
    flows = {"pipeline": "pipeline", "pipeline-cpu": "pipeline", "inbox": "inbox", "validate": "validate-inputs",
             "evaluate": "evaluate", "train-base": "train-base"}
    names = _deployment_names()
    assert set(names) == set(flows)
    for name in names:
        if name == "evaluate" and deployed["missing_evaluate"]:
            continue
        deployment = _deployment(flows[name], name)
        assert deployment.enforce_parameter_schema, name
        assert deployment.work_pool_name in {"cpu", "gpu"}
    inbox = _deployment("inbox", "inbox")
    assert [s.schedule.cron for s in inbox.schedules] == ["*/15 * * * *"]
    # Deployed paused (no Late runs where no gpu worker polls); the documented command turns it on.
    assert [s.active for s in inbox.schedules] == [False]
    server.cli("deployment", "schedule", "resume", "inbox/inbox", str(inbox.schedules[0].id))
    assert [s.active for s in _deployment("inbox", "inbox").schedules] == [True]
    server.cli("deployment", "schedule", "pause", "inbox/inbox", str(inbox.schedules[0].id))
    assert [s.active for s in _deployment("inbox", "inbox").schedules] == [False]
    limit = _client_call(lambda c: c.read_global_concurrency_limit_by_name("tag:gpu"))
    assert limit.limit == 1
    if deployed["missing_evaluate"]:
        pytest.skip("flows/evaluate.py does not exist yet: the evaluate deployment was not deployed")


def test_out_of_bounds_parameters_are_refused_by_the_deployment(deployed: dict[str, Any], tmp_path: Path) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    deployment = _deployment("pipeline", "pipeline-cpu")
    good = {"inputs": [str(tmp_path)], "store": str(tmp_path / "s.zarr"), **SMALL}
    for bad in ({"samples": 0}, {"t0": 5000}, {"eta": 1.5}, {"prior": "cauchy"}, {"unknown_knob": 1},
                {"inputs": ["  "]}):
        with pytest.raises(PrefectHTTPStatusError) as info:
            _client_call(lambda c, b=bad: c.create_flow_run_from_deployment(
                deployment.id, parameters={"params": {**good, **b}}))
        assert info.value.response.status_code in (409, 422), bad
    # Rules across fields (the pydantic validator's) are in the schema too: refused here, not on the worker.
    cross = [({"t0": 400, "steps": 401}, "params.steps", "401 is greater than the maximum of 400"),
             ({"t0": 30, "steps": None}, "params", "'steps' is a required property"),
             ({"t0": None, "steps": 700}, "params.steps", "700 is greater than the maximum of 600"),
             ({"auto_t0": True, "t0_scan": []}, "params.t0_scan", "should be non-empty")]
    for bad, field, reason in cross:
        params = {k: v for k, v in {**good, **bad}.items() if v is not None}
        with pytest.raises(PrefectHTTPStatusError) as info:
            _client_call(lambda c, p=params: c.create_flow_run_from_deployment(
                deployment.id, parameters={"params": p}))
        assert info.value.response.status_code in (409, 422), bad
        detail = info.value.response.text
        assert f"field '{field}'" in detail and reason in detail, (bad, detail)
    # The same combinations without the conflict are accepted, and an empty optional number (tile, hdu) too.
    for fine in ({"t0": 400, "steps": 400}, {"auto_t0": True, "steps": 700}, {"tile": None, "hdu": None}):
        run = _client_call(lambda c, f=fine: c.create_flow_run_from_deployment(
            deployment.id, parameters={"params": {**good, **f}}))
        _client_call(lambda c, r=run: c.delete_flow_run(r.id))  # never executed
    with pytest.raises(PrefectHTTPStatusError):
        _client_call(lambda c: c.create_flow_run_from_deployment(deployment.id, parameters={"params": {}}))
    runs = _client_call(lambda c: c.read_flow_runs())
    assert not [r for r in runs if r.deployment_id == deployment.id]


def test_ui_style_run_is_executed_by_a_process_worker(
    deployed: dict[str, Any], server: Server, tmp_path: Path
) -> None:
    inputs = _copy_inputs(tmp_path / "inputs")
    store = tmp_path / "store.zarr"
    deployment = _deployment("pipeline", "pipeline-cpu")
    params = {"inputs": [str(inputs)], "store": str(store), **SMALL}
    flow_run = _client_call(lambda c: c.create_flow_run_from_deployment(deployment.id, parameters={"params": params}))
    finished, output = _run_worker(server, "cpu", flow_run.id)
    assert finished.state is not None and finished.state.is_completed(), f"{finished.state}\n{output}"
    # The name tells runs apart: what it read and where it wrote, then the settings.
    assert finished.name == "pipeline-inputs-to-store.zarr-seed=1-samples=2-t0=400-steps=6", finished.name

    runs = list_runs(str(store))
    assert [r.status for r in runs] == ["complete"] and runs[0].n_samples == 2 and runs[0].n_inputs == 4
    assert validate_store(str(store)) == []
    record = open_run(str(store)).attrs["ood_run"]
    assert record["prefect"]["flow_run_id"] == str(flow_run.id)
    assert record["prefect"]["deployment_name"] == "pipeline-cpu"
    assert [Path(q["path"]).name for q in record["quarantined"]] == ["broken.fits"]
    assert (tmp_path / f"{runs[0].run_id}_contact.png").is_file()

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = _client_call(lambda c: c.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))))
    kinds = {a.type for a in artifacts}
    assert {"markdown", "table", "progress"} <= kinds and "image" not in kinds, kinds  # progress: on this run
    summary = next(a.data for a in artifacts if a.type == "markdown")
    assert runs[0].run_id in summary and "broken.fits" in summary
    assert "](data:image/png;base64," in summary  # the contact sheet, embedded


def test_inbox_deployment_is_idempotent(deployed: dict[str, Any], server: Server, tmp_path: Path) -> None:
    from flows.inbox import InboxParameters, inbox_flow

    inbox = _copy_inputs(tmp_path / "inbox", count=3)
    store = tmp_path / "inbox_store.zarr"
    params = {"inbox": str(inbox), "store": str(store), **SMALL}
    first = inbox_flow(InboxParameters(**params))
    assert first["skipped"] is False and [r.run_id for r in list_runs(str(store))] == [first["run_id"]]
    assert open_run(str(store)).attrs["ood_run"]["input_set_key"] == first["input_set_key"]

    # The scheduled deployment, run by a worker, sees the same input set: it makes no new run.
    deployment = _deployment("inbox", "inbox")
    flow_run = _client_call(lambda c: c.create_flow_run_from_deployment(deployment.id, parameters={"params": params}))
    finished, output = _run_worker(server, "gpu", flow_run.id)
    assert finished.state is not None and finished.state.is_completed(), f"{finished.state}\n{output}"
    second = _client_call(lambda c: c.read_flow_run(flow_run.id)).state.result()  # type: ignore[union-attr]
    assert second["skipped"] is True and second["run_id"] == first["run_id"]
    assert [r.run_id for r in list_runs(str(store))] == [first["run_id"]]


def _logs(flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = _client_call(lambda c: c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))))
    return [log.message for log in logs]


def test_expected_failure_on_a_worker_ends_with_one_reason_and_an_artifact(
    deployed: dict[str, Any], server: Server, tmp_path: Path
) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    inputs = _copy_inputs(tmp_path / "two", count=2)  # 2 usable + broken.fits: the method needs 3
    store = tmp_path / "store.zarr"
    deployment = _deployment("pipeline", "pipeline-cpu")
    params = {"inputs": [str(inputs)], "store": str(store), **SMALL}
    typed = "two GLIMPSE cutouts, should stop"
    flow_run = _client_call(lambda c: c.create_flow_run_from_deployment(
        deployment.id, parameters={"params": params}, name=typed))
    finished, output = _run_worker(server, "cpu", flow_run.id)
    assert finished.state is not None and finished.state.is_failed(), f"{finished.state}\n{output}"
    assert finished.name == typed  # a name typed in the form is kept
    assert finished.state.message.startswith("only 2 usable input(s), the method needs at least 3")
    logs = _logs(flow_run.id)
    assert logs and not [m for m in logs if "Traceback" in m or "Engine execution exited" in m], logs
    assert "Engine execution exited" not in output and "Traceback" not in output, output[-3000:]
    assert sum("run failed: only 2 usable" in m for m in logs) == 1
    assert any("quarantined" in m and "broken.fits" in m for m in logs)  # ood_core's warning, in the UI's logs
    artifacts = _client_call(lambda c: c.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))))
    summary = next(a for a in artifacts if a.key == "ood-run-summary")
    assert "## What to change" in summary.data and "broken.fits" in summary.data
    assert not store.exists() or list_runs(str(store)) == []
