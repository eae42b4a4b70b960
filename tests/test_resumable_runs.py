"""Runs that outlive their infrastructure (issue 28), through the flow users run: a failure of the infrastructure
(the device out of memory, a lost store) leaves a failed run that `ood runs` calls resumable and a resume completes
bit for bit; a run refused for its settings stays failed; a Prefect retry of the flow run takes up the same run;
provenance lists every attempt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from flows.pipeline import pipeline_flow
from ood_cli.main import EXIT_OK, EXIT_USAGE, main
from ood_core.errors import ConfigurationError
from ood_core.pipeline import PipelineParameters, stages
from ood_core.store import list_runs, open_run
from ood_core.store.lease import current_lease
from ood_core.store.schema import validate_store

pytestmark = pytest.mark.usefixtures("prefect_server")
SAMPLE_NAMES = ("samples", "samples_physical", "sample_latents", "sample_seed", "sample_parent")


def params_for(inputs: Path, store: Path) -> PipelineParameters:
    return PipelineParameters(inputs=[str(inputs)], store=str(store), samples=3, steps=4, t0=400, reference_count=4,
                              batch_size=2, device="cpu", seed=5, prior="ppca")


@pytest.fixture(scope="module")
def plain(skies: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The samples of the same run made in one go."""
    store = tmp_path_factory.mktemp("plain") / "store.zarr"
    pipeline_flow(params_for(skies, store))
    ds = open_run(str(store))
    return {name: ds[name].values for name in SAMPLE_NAMES}


def fail_sample_stage_once(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> dict[str, int]:
    """The sample stage raises ``error`` after its first committed batch, the first time only."""
    real = stages.stage_sample
    calls = {"sample": 0}

    def failing(params: Any, model: Any, writer: Any, progress: Any = None, **kwargs: Any) -> Any:
        calls["sample"] += 1
        if calls["sample"] > 1:
            return real(params, model, writer, progress, **kwargs)

        def hook(stage: str, done: int, total: int) -> None:
            if stage == "sample" and done >= 1:
                raise error

        return real(params, model, writer, hook, **kwargs)

    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "sample", failing)
    return calls


def assert_same_samples(store: Path, plain: dict[str, np.ndarray]) -> None:
    ds = open_run(str(store))  # verifies the checksums written at completion
    for name in SAMPLE_NAMES:
        np.testing.assert_array_equal(ds[name].values, plain[name], err_msg=name)
    assert validate_store(str(store)) == []


def test_a_device_out_of_memory_leaves_a_resumable_run_that_a_resume_completes_bit_for_bit(
        skies: Path, plain: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.zarr"
    fail_sample_stage_once(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(torch.OutOfMemoryError):
        pipeline_flow(params_for(skies, store))
    [run] = list_runs(str(store))
    assert run.status == "failed" and run.resumable and 1 <= run.n_samples < 3
    record = open_run(str(store), run.run_id, allow_incomplete=True).attrs["ood_run"]
    assert record["failure"] == {"resumable": True, "kind": "device out of memory"}
    assert main(["runs", str(store)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"resumable (the infrastructure failed, not the inputs or settings): ood run --resume {run.run_id}" in out
    assert current_lease(str(store), run.run_id).released  # type: ignore[union-attr]

    result = pipeline_flow(params_for(skies, store), resume_run_id=run.run_id)
    assert result["run_id"] == run.run_id and result["n_samples"] == 3
    assert_same_samples(store, plain)
    assert main(["runs", str(store)]) == EXIT_OK
    assert f"{run.run_id}: written in 2 attempts" in capsys.readouterr().out
    attempts = open_run(str(store)).attrs["ood_run"]["attempts"]
    assert [(a["how"], a["lease"], a["outcome"]) for a in attempts] == [
        ("created", 1, "failed"), ("resumed", 2, "complete")]
    assert attempts[0]["error"].startswith("OutOfMemoryError: CUDA out of memory") and attempts[0]["resumable"]
    assert all(a["host"] and a["pid"] and a["started"] and a["ended"] for a in attempts)


def test_a_run_refused_for_its_settings_stays_failed_with_its_reason(
        skies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.zarr"
    fail_sample_stage_once(monkeypatch, ConfigurationError("--candidate-budget 2 is below the batch of 8"))
    with pytest.raises(ConfigurationError):
        pipeline_flow(params_for(skies, store))
    [run] = list_runs(str(store))
    assert run.status == "failed" and not run.resumable
    assert main(["runs", str(store)]) == EXIT_OK
    assert "resumable" not in capsys.readouterr().out
    assert main(["run", "--resume", run.run_id, "--store", str(store)]) == EXIT_USAGE
    assert "was refused (ConfigurationError: --candidate-budget 2 is below the batch of 8); it stays failed" in (
        capsys.readouterr().err)


def test_a_retried_flow_run_takes_up_its_failed_run_instead_of_starting_another(
        skies: Path, plain: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store.zarr"
    calls = fail_sample_stage_once(monkeypatch, RuntimeError("CUDA error: an illegal memory access was encountered"))
    result = pipeline_flow.with_options(retries=1, retry_delay_seconds=0)(params_for(skies, store))
    assert calls["sample"] == 2 and result["n_samples"] == 3
    [run] = list_runs(str(store))  # one run, not a second one started from nothing
    assert run.status == "complete"
    assert_same_samples(store, plain)
    attempts = open_run(str(store)).attrs["ood_run"]["attempts"]
    assert [(a["how"], a["outcome"]) for a in attempts] == [("created", "failed"), ("retried", "complete")]
