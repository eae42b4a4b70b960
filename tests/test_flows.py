"""The Prefect flows run in-process (temporary Prefect server via prefect_test_harness) on real FITS cutouts
with the shipped model: artifacts, quarantine, no-usable-input, validation on a local Dask cluster, train_base."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from made_fits import write_skies

from ood_core.errors import NoUsableInputError
from ood_core.pipeline.config import PipelineParameters
from ood_core.store import list_runs, open_run
from ood_core.store.schema import validate_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def small_params(inputs: list[str], store: Path, **overrides: object) -> PipelineParameters:
    values: dict[str, object] = dict(
        inputs=inputs, store=str(store), samples=3, steps=6, t0=400, reference_count=4, batch_size=8,
        device="cpu", seed=5,
    )
    values.update(overrides)
    return PipelineParameters(**values)  # type: ignore[arg-type]


@pytest.fixture()
def mixed_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    write_skies(folder, 4)  # demo skies (tests/made_fits.py)
    [spare] = write_skies(tmp_path / "spare", 1, seed=9)
    (folder / "truncated.fits").write_bytes(spare.read_bytes()[:4000])
    (folder / "notes.fits").write_text("this is not a FITS file")
    return folder


def artifacts_of(flow_run_id: UUID | None) -> list[Any]:
    """Artifacts of one flow run (None: all of them)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read() -> list[Any]:
        async with get_client() as client:
            if flow_run_id is None:
                return await client.read_artifacts()
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    return asyncio.run(read())


def logs_of(flow_run_id: UUID) -> list[Any]:
    """Every log record of one flow run as the UI shows them (flow and task runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))

    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are shipped in batches
    return asyncio.run(read())


def test_pipeline_flow_quarantines_bad_files_and_attaches_artifacts(mixed_dir: Path, tmp_path: Path) -> None:
    from flows.pipeline import pipeline_flow

    store = tmp_path / "store.zarr"
    state = pipeline_flow(small_params([str(mixed_dir)], store), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["n_inputs"] == 4 and result["n_samples"] == 3
    assert {Path(q["path"]).name for q in result["quarantined"]} == {"truncated.fits", "notes.fits"}
    assert all(q["reason"] for q in result["quarantined"])
    assert validate_store(str(store)) == []
    ds = open_run(str(store), result["run_id"])
    record = ds.attrs["ood_run"]
    assert record["status"] == "complete" and len(record["quarantined"]) == 2
    assert record["prefect"]["flow_run_id"] == str(state.state_details.flow_run_id)
    assert record["input_set_key"]
    png = Path(result["contact_sheet"])
    assert png == tmp_path / f"{result['run_id']}_contact.png" and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    artifacts = {a.type: a for a in artifacts_of(state.state_details.flow_run_id)}
    assert {"markdown", "table"} <= set(artifacts) and "image" not in artifacts
    # Progress artifacts are reported by the stage tasks, on this pipeline run (what the user watches).
    progress = [a for a in artifacts_of(state.state_details.flow_run_id) if a.type == "progress"]
    assert {"progress-invert", "progress-reference", "progress-sample"} <= {a.key for a in progress}
    assert all(float(a.data) == 100.0 for a in progress if a.key == "progress-sample")
    summary = artifacts["markdown"].data
    assert result["run_id"] in summary and str(store) in summary
    assert "truncated.fits" in summary and "notes.fits" in summary and "acceptance rate" in summary
    assert "data:image/png;base64," in summary
    table = artifacts["table"].data
    rows = table if isinstance(table, list) else __import__("json").loads(table)
    assert len(rows) == 3 and {"seed", "parent", "nearest_input_distance"} <= set(rows[0])
    assert set(result["artifacts"]) >= {"ood-run-summary", "ood-run-criteria"}
    assert result["pictures"] == [str(png)]
    # ood_core's warnings (each quarantined file) are in the flow run's logs, as the UI shows them.
    messages = [log.message for log in logs_of(state.state_details.flow_run_id)]
    assert any("quarantined" in m and "truncated.fits" in m for m in messages), messages[:20]
    assert any("quarantined" in m and "notes.fits" in m for m in messages)


def test_pipeline_flow_with_nothing_usable_raises_and_writes_no_run(tmp_path: Path) -> None:
    from flows.pipeline import pipeline_flow

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.fits").write_text("not fits")
    (bad / "b.fits").write_bytes(b"SIMPLE  =                    T" + b"\0" * 50)
    store = tmp_path / "store.zarr"
    with pytest.raises(NoUsableInputError, match=r"a\.fits") as info:
        pipeline_flow(small_params([str(bad)], store))
    assert {Path(q.path).name for q in info.value.quarantined} == {"a.fits", "b.fits"}
    assert not store.exists() or list_runs(str(store)) == []


def test_expected_failure_ends_with_one_reason_and_a_summary_artifact(tmp_path: Path) -> None:
    from flows.pipeline import pipeline_flow

    folder = tmp_path / "two"
    write_skies(folder, 2)
    (folder / "notes.fits").write_text("not a FITS file")
    store = tmp_path / "store.zarr"
    state = pipeline_flow(small_params([str(folder)], store), return_state=True)
    assert state.is_failed()
    assert state.message.startswith("only 2 usable input(s), the method needs at least 3"), state.message
    assert "\n" not in state.message
    with pytest.raises(NoUsableInputError):
        state.result()
    flow_run_id = state.state_details.flow_run_id
    summary = next(a for a in artifacts_of(flow_run_id) if a.key == "ood-run-summary")
    assert summary.type == "markdown"
    assert "# Run failed: only 2 usable input(s)" in summary.data and "## What to change" in summary.data
    assert "add more images" in summary.data and "`tile`" in summary.data
    assert "notes.fits" in summary.data and "nothing was written to the store" in summary.data
    logs = [log.message for log in logs_of(flow_run_id)]
    assert not [m for m in logs if "Traceback" in m], logs
    assert sum("run failed: only 2 usable" in m for m in logs) == 1
    assert not store.exists() or list_runs(str(store)) == []


def test_validate_flow_on_a_local_dask_cluster(mixed_dir: Path) -> None:
    from flows.validate import ValidateParameters, validate_flow

    out = validate_flow(ValidateParameters(inputs=[str(mixed_dir)], min_size=64, dask_workers=2))
    assert len(out["usable"]) == 4
    assert {Path(q["path"]).name for q in out["quarantined"]} == {"truncated.fits", "notes.fits"}
    assert all(r["sha256"] for r in out["records"] if r["ok"])


def test_validate_flow_on_an_existing_dask_cluster_by_address(mixed_dir: Path) -> None:
    from distributed import Client, LocalCluster

    from flows.validate import ValidateParameters, validate_flow

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        before = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.task_prefixes))
        out = validate_flow(ValidateParameters(inputs=[str(mixed_dir / "*.fits")], min_size=64,
                                           dask_address=cluster.scheduler_address))
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert len(out["usable"]) == 4 and len(out["quarantined"]) == 2
    assert len(prefixes) > before and any("validate" in p for p in prefixes), prefixes


def test_train_base_flow_trains_exports_and_writes_a_card(tmp_path: Path) -> None:
    from flows.train_base import TrainBaseParameters, train_base_flow

    cutouts = tmp_path / "cutouts"
    write_skies(cutouts, 2)  # the card's reconstruction table on demo skies
    params = TrainBaseParameters(
        out_dir=str(tmp_path / "model"), checkpoint_dir=str(tmp_path / "ckpt"), resolution=16,
        block_out_channels=[16, 32], attention_levels=[], batch_size=2, total_steps=4, max_steps=2,
        checkpoint_every=1, warmup_steps=1, card_cutouts=str(cutouts), card_t0=200, card_steps=4,
    )
    first = train_base_flow(params)
    assert first["train"]["step"] == 2 and first["export"]["steps"] == 2
    second = train_base_flow(params)  # resumes from the checkpoint: 2 more steps, not 2 from scratch
    assert second["train"]["step"] == 4
    model_dir = tmp_path / "model"
    assert (model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (model_dir / "README.md").is_file() and (model_dir / "samples.png").is_file()
    assert second["card"]["steps"] == 4


def test_a_retried_sample_task_resumes_instead_of_redoing_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from flows.pipeline import pipeline_flow
    from ood_core.method import ddim
    from ood_core.pipeline import stages

    folder = tmp_path / "inputs"
    write_skies(folder, 3)
    calls = {"sample": 0, "invert": 0}
    real_sample, real_invert = stages.stage_sample, ddim.invert_and_reconstruct

    def flaky_sample(params: Any, model: Any, writer: Any, progress: Any = None, **kwargs: Any) -> Any:
        calls["sample"] += 1
        if calls["sample"] == 1:  # the store "goes away" after the first committed batch: a retryable error

            def hook(stage: str, done: int, total: int) -> None:
                if stage == "sample" and done >= 1:
                    raise OSError("store connection reset")

            return real_sample(params, model, writer, hook, **kwargs)
        return real_sample(params, model, writer, progress, **kwargs)

    def counting_invert(*args: Any, **kwargs: Any) -> Any:
        calls["invert"] += 1
        return real_invert(*args, **kwargs)

    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "sample", flaky_sample)
    monkeypatch.setattr(ddim, "invert_and_reconstruct", counting_invert)
    store = tmp_path / "store.zarr"
    result = pipeline_flow(small_params([str(folder)], store, samples=3, batch_size=2))
    assert calls == {"sample": 2, "invert": 1}  # retried once; inversion never recomputed
    assert result["n_samples"] == 3 and validate_store(str(store)) == []
    seeds = open_run(str(store)).sample_seed.values
    assert len(np.unique(seeds)) == 3  # the retry continued after the committed samples, no duplicates
