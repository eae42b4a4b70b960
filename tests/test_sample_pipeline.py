"""The pipelined sample stage (issue 22): the same samples, counters and checkpoints as the serial order, bit for
bit, on demo skies with the shipped one-channel model (near-copies and retried slots included); an error while a
block is screened, denoised, converted or written stops the run with no later block written and is raised to the
caller. The ordered pipeline itself: stage order, bounded look-ahead, errors in item order."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from made_fits import write_skies

from ood_core.method.model import FrozenDiffusionModel
from ood_core.pipeline import prepare_run, sample_stage, stages
from ood_core.pipeline.config import PipelineParameters
from ood_core.pipeline.pipelined import run_pipelined, run_serial
from ood_core.store import RunWriter, list_runs

SAMPLE_NAMES = ("samples", "samples_physical", "sample_latents", "sample_seed", "sample_parent", "sample_criteria",
                "sample_nearest_input_distance")
CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------- the pipeline alone


@pytest.mark.parametrize("preparers", [1, 2, 3])
def test_pipelined_stages_see_what_the_serial_order_gives_and_finish_in_order(preparers: int) -> None:
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()

    def note(stage: str, index: int) -> None:
        with lock:
            calls.append((stage, index))

    def prepare(i: int) -> int:
        note("prepare", i)
        time.sleep(0.002 * (i % 3))  # uneven stages: the order must not depend on timing
        return 10 * i

    def compute(i: int, prepared: int) -> int:
        note("compute", i)
        return prepared + 1

    finished: list[tuple[int, int]] = []

    def finish(i: int, computed: int) -> None:
        time.sleep(0.001 * (i % 2))
        finished.append((i, computed))

    run_pipelined(range(3, 12), prepare, compute, finish, device=CPU, preparers=preparers)
    serial: list[tuple[int, int]] = []
    run_serial(range(3, 12), lambda i: 10 * i, lambda i, p: p + 1, lambda i, c: serial.append((i, c)))
    assert finished == serial == [(i, 10 * i + 1) for i in range(3, 12)]
    assert [i for stage, i in calls if stage == "compute"] == list(range(3, 12))


def test_worker_threads_compute_with_the_callers_torch_threads() -> None:
    """Float sums depend on torch's thread count: every stage must see the caller's."""
    seen: list[int] = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            run_pipelined(range(2), lambda i: seen.append(torch.get_num_threads()),
                          lambda i, p: seen.append(torch.get_num_threads()),
                          lambda i, c: seen.append(torch.get_num_threads()), device=CPU, preparers=2)
            assert seen == [threads] * 6  # two items through three stages, in four threads
            seen.clear()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("preparers", [1, 2])
def test_pipelined_look_ahead_is_bounded(preparers: int) -> None:
    prepared, finished = [0], [0]
    most = [0]

    def prepare(i: int) -> int:
        prepared[0] += 1
        most[0] = max(most[0], prepared[0] - finished[0])
        return i

    def finish(i: int, computed: int) -> None:
        time.sleep(0.005)  # a slow writer: everything else waits for it
        finished[0] += 1

    run_pipelined(range(40), prepare, lambda i, p: p, finish, device=CPU, depth=2, preparers=preparers)
    assert finished[0] == 40
    assert most[0] <= 2 * 2 + 2 + preparers  # two queues of depth 2, one item in each thread


@pytest.mark.parametrize("preparers", [1, 2])
@pytest.mark.parametrize("stage", ["prepare", "compute", "finish"])
def test_an_error_stops_the_pipeline_in_item_order(stage: str, preparers: int) -> None:
    finished: list[int] = []

    def fails(name: str, i: int) -> None:
        if name == stage and i == 4:
            raise ValueError(f"{name} failed at {i}")

    def prepare(i: int) -> int:
        fails("prepare", i)
        return i

    def compute(i: int, prepared: int) -> int:
        fails("compute", i)
        return prepared

    def finish(i: int, computed: int) -> None:
        fails("finish", i)
        finished.append(i)

    with pytest.raises(ValueError, match=f"{stage} failed at 4"):
        run_pipelined(range(10), prepare, compute, finish, device=CPU, preparers=preparers)
    assert finished == [0, 1, 2, 3]  # the items before the failed one, as the serial order would have
    assert threading.active_count() == 1 or all(
        not t.name.startswith("ood-pipeline") for t in threading.enumerate())


# --------------------------------------------------------------------------------------------- the sample stage


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory: pytest.TempPathFactory, mono_model: FrozenDiffusionModel
                 ) -> tuple[PipelineParameters, Path]:
    """A run of 12 demo skies through its prior stage: 14 slots in blocks of 4 (the last block short), novelty
    factor 1 and eta 0.2 so that near-copies send slots back to screening, matched noise on, PPCA prior."""
    folder = tmp_path_factory.mktemp("pipeline")
    write_skies(folder / "inputs", 12, size=96)
    params = PipelineParameters(inputs=[str(folder / "inputs")], store=str(folder / "base.zarr"), samples=14,
                                steps=3, t0=300, reference_count=4, batch_size=4, device="cpu", seed=5,
                                calibrate=False, noise="on", prior="ppca", novelty_factor=1.0, eta=0.2,
                                candidate_budget=14 * 16)
    run_id = prepare_run(params, mono_model)
    writer = RunWriter.open(params.store, run_id)
    stages.stage_invert(params, mono_model, writer)
    stages.stage_prior(params, mono_model, writer)
    return params, folder


def _copy_of(prepared: tuple[PipelineParameters, Path], name: str) -> tuple[PipelineParameters, RunWriter]:
    params, folder = prepared
    target = folder / f"{name}.zarr"
    shutil.copytree(params.store, target)
    copy = params.model_copy(update={"store": str(target)})
    (run,) = list_runs(copy.store)
    return copy, RunWriter.open(copy.store, run.run_id)


def _sample_once(prepared: tuple[PipelineParameters, Path], model: FrozenDiffusionModel, name: str,
                 pipelined: bool) -> tuple[dict[str, np.ndarray], sample_stage.Counters, dict[str, Any] | None]:
    params, writer = _copy_of(prepared, name)
    ctx = sample_stage.SampleContext(params, writer, model)
    counters = sample_stage.run_blocks(ctx, model, sample_stage.appender_of(writer), range(ctx.plan.blocks), None,
                                   pipelined=pipelined)
    writer.flush()
    return {n: writer.read(n) for n in SAMPLE_NAMES}, counters, writer.sample_checkpoint


def test_pipelined_stage_writes_the_serial_stage_samples_bit_for_bit(
    prepared_run: tuple[PipelineParameters, Path], mono_model: FrozenDiffusionModel, one_torch_thread: None
) -> None:
    serial = _sample_once(prepared_run, mono_model, "serial", pipelined=False)
    piped = _sample_once(prepared_run, mono_model, "piped", pipelined=True)
    arrays, counters, checkpoint = serial
    assert counters.near_copies > 0 and len(arrays["samples"]) > 0  # retries happened: the test sees them
    for name in SAMPLE_NAMES:
        assert arrays[name].dtype == piped[0][name].dtype, name
        assert arrays[name].shape == piped[0][name].shape, name
        assert arrays[name].tobytes() == piped[0][name].tobytes(), name
    assert counters == piped[1]
    assert checkpoint == piped[2] and checkpoint is not None and checkpoint["next_block"] == 4


@pytest.mark.parametrize("where", ["convert", "append", "screen", "denoise"])
def test_an_error_in_block_k_leaves_later_blocks_unwritten_and_reaches_the_caller(
    prepared_run: tuple[PipelineParameters, Path], mono_model: FrozenDiffusionModel,
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    params, writer = _copy_of(prepared_run, f"fail_{where}")
    ctx = sample_stage.SampleContext(params, writer, model=mono_model)
    failing_block = 2
    failing_slots = set(ctx.plan.slots(failing_block))
    appended: list[int] = []
    append = sample_stage.appender_of(writer)

    def boom(*args: Any) -> Any:
        raise RuntimeError(f"{where} failed")

    def guarded_append(batch: dict[str, Any], checkpoint: dict[str, Any]) -> int:
        if where == "append" and checkpoint["next_block"] == failing_block + 1:
            boom()
        appended.append(checkpoint["next_block"] - 1)
        return append(batch, checkpoint)

    with_noise, first_look, finish_block = ctx.with_noise, sample_stage.first_look, sample_stage.finish_block
    if where == "convert":
        monkeypatch.setattr(ctx, "with_noise", lambda samples, parents, nearest, slots: (
            boom() if set(slots) <= failing_slots else with_noise(samples, parents, nearest, slots)))
    if where == "screen":
        monkeypatch.setattr(sample_stage, "first_look", lambda c, index: (
            boom() if index == failing_block else first_look(c, index)))
    if where == "denoise":
        monkeypatch.setattr(sample_stage, "finish_block", lambda c, m, block, chosen: (
            boom() if set(block.slots) == failing_slots else finish_block(c, m, block, chosen)))
    with pytest.raises(RuntimeError, match=f"{where} failed"):
        sample_stage.run_blocks(ctx, mono_model, guarded_append, range(ctx.plan.blocks), None, pipelined=True)
    writer.flush()
    assert appended == [0, 1]
    assert writer.sample_checkpoint is not None and writer.sample_checkpoint["next_block"] == failing_block
    assert writer.n_samples == writer.committed_samples <= 2 * ctx.plan.block
