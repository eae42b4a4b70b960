"""evaluate_run end to end: a real run of the shipped model on the project's own skies (FITS files in MJy/sr,
written and read back) against held-out skies of the same kind; and the run's own report on that run (contact
sheet in physical units, criteria table, the report task's artifacts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from made_fits import write_skies

from ood_core.errors import ConfigurationError
from ood_core.evaluation import TABLE_COLUMNS, evaluate_run, evaluation_markdown, format_table, load_reference
from ood_core.evaluation.metrics import METRIC_DOCS
from ood_core.io.fits import read_fits_image
from ood_core.method.model import FrozenDiffusionModel
from ood_core.method.normalization import NormalizationParams, denormalize, normalize, resize_to_resolution
from ood_core.pipeline import run_in_process
from ood_core.pipeline.config import PipelineParameters
from ood_core.store import open_run

N_INPUTS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One torch thread: the 2-core test machine is shared, and oversubscription is several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def skies(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Nine made 128 px skies in MJy/sr: the first N_INPUTS are the run's inputs, the rest its references."""
    return [str(p) for p in write_skies(tmp_path_factory.mktemp("skies"), N_INPUTS + 5, unit="MJy/sr")]


@pytest.fixture(scope="module")
def run(skies: list[str], mono_model: FrozenDiffusionModel, tmp_path_factory: pytest.TempPathFactory
        ) -> dict[str, Any]:
    store = tmp_path_factory.mktemp("eval") / "store.zarr"
    params = PipelineParameters(inputs=skies[:N_INPUTS], store=str(store), samples=4, steps=8, t0=400,
                                reference_count=4, batch_size=8, device="cpu", seed=3)
    result = run_in_process(params)
    return {"store": str(store), "run_id": result.run_id}


@pytest.fixture(scope="module")
def evaluation(run: dict[str, Any], skies: list[str], mono_model: FrozenDiffusionModel,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("eval_out")
    # One input among the references: it must be left out, not counted as unseen.
    reference = [skies[N_INPUTS - 1], *skies[N_INPUTS : N_INPUTS + 5]]
    return evaluate_run(run["store"], reference, run["run_id"], out_dir=out, n_baseline_samples=4,
                        finetune_steps=2, finetune_batch_size=2, sample_steps=6, in_domain_anchor_count=6,
                        model=mono_model)


def test_json_is_strict_and_equals_the_result(evaluation: dict[str, Any]) -> None:
    path = Path(evaluation["json"])

    def no_constant(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=no_constant) == evaluation


def test_table_has_the_method_every_baseline_and_the_inputs(evaluation: dict[str, Any]) -> None:
    rows = {row["set"]: row for row in evaluation["table"]}
    assert list(rows) == ["method", "in_domain", "prior_unscreened", "augmentation", "finetune", "inputs"]
    for row in rows.values():
        assert row["n"] == 4
        for key, _ in TABLE_COLUMNS:
            assert key in METRIC_DOCS
            assert key in row
    for name in ("pixel_w1", "spectrum_dex", "gini_w1", "minkowski_euler", "domain_separation"):
        assert all(isinstance(row[name], float) for row in rows.values()), name
    text = format_table(evaluation)
    assert text.count("\n") == 1 + len(rows) and "| finetune |" in text
    assert "finetune" in format_table(evaluation, markdown=False)


def test_known_relations_between_rows(evaluation: dict[str, Any]) -> None:
    sets = evaluation["sets"]
    # The inputs are the inputs: nearest-input distance 0, all near-copies.
    assert sets["inputs"]["nearest_input_median"] == 0.0 and sets["inputs"]["near_copy_fraction"] == 1.0
    # Novelty is measured up to flips/rotations: augmentation (flipped/rotated inputs) is a copy, ratio 0
    # where a plain nearest-input distance called it as new as unseen skies (ratio about 1).
    assert sets["augmentation"]["near_copy_fraction"] == 1.0
    assert sets["augmentation"]["nearest_input_ratio"] < 0.05
    assert max(sets["augmentation"]["nearest_input_distances"]) < 1e-6
    # The run's sampler rejected near-copies by the same rule: its samples are new, and newer than augmentation.
    assert sets["method"]["near_copy_fraction"] == 0.0
    assert sets["method"]["nearest_input_ratio"] > 0.5
    # Every set is scored with the same in-domain vs reference classifier.
    accuracies = {round(v["domain_classifier_loo_accuracy"], 9) for v in sets.values()}
    assert len(accuracies) == 1
    # The base model's own samples score as base domain more than the inputs do.
    assert sets["in_domain"]["domain_separation"] < sets["inputs"]["domain_separation"]
    # ... and a classifier on texture and source features tells them from the reference; the inputs it does not
    # tell apart (C2ST, image level, against the 5 reference skies).
    assert sets["in_domain"]["c2st_accuracy"] >= 0.9 and sets["in_domain"]["c2st_distinguishable"]
    assert sets["inputs"]["c2st_accuracy"] < 0.8 and not sets["inputs"]["c2st_distinguishable"]
    assert all(v["c2st"]["n_real"] == 5 and v["c2st_ci_low"] <= v["c2st_accuracy"] <= v["c2st_ci_high"]
               for v in sets.values())
    markdown = evaluation_markdown(evaluation, {})
    assert "C2ST accuracy" in markdown and "`in_domain`" in markdown.split("Told apart")[1].split("\n")[0]


def test_reference_excludes_inputs_and_is_in_run_units(
    evaluation: dict[str, Any], run: dict[str, Any], skies: list[str], mono_model: FrozenDiffusionModel
) -> None:
    reference = evaluation["reference"]
    assert reference["n"] == 5
    assert [e["path"] for e in reference["excluded"]] == [skies[N_INPUTS - 1]]
    # Reading the reference again by hand gives the run-normalized physical values (clipped like samples).
    provenance = open_run(run["store"], run["run_id"], chunks=None).attrs["ood_run"]
    loaded = load_reference([skies[N_INPUTS]], provenance, mono_model.resolution, mono_model.channels)
    params = NormalizationParams.from_dict(provenance["normalization"]["params"][0])
    image = read_fits_image(skies[N_INPUTS])
    plane, _ = resize_to_resolution(image.data, image.mask, mono_model.resolution)
    expected = denormalize(normalize(plane, params), params)
    np.testing.assert_array_equal(loaded.images.physical[0], expected)
    low, high = params.background + params.vmin, params.background + params.vmax
    assert loaded.images.physical.min() >= low - 1e-3 * abs(low) and loaded.images.physical.max() <= high * 1.001
    assert torch.equal(loaded.images.model[0, 0], torch.from_numpy(normalize(plane, params)))


def test_plots_are_written(evaluation: dict[str, Any]) -> None:
    assert set(evaluation["plots"]) == {"contact_sheet", "power_spectra", "pixel_histograms", "morphology",
                                        "minkowski", "novelty", "c2st"}
    for path in evaluation["plots"].values():
        assert Path(path).read_bytes()[:4] == b"\x89PNG"
        assert Path(path).parent == Path(evaluation["json"]).parent


def test_bad_calls_raise(run: dict[str, Any], skies: list[str], mono_model: FrozenDiffusionModel,
                         tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="choose from"):
        evaluate_run(run["store"], skies[N_INPUTS:], out_dir=tmp_path, baselines=["gan"], model=mono_model)
    with pytest.raises(ConfigurationError, match="no usable reference"):
        evaluate_run(run["store"], skies[:N_INPUTS], out_dir=tmp_path, baselines=[], model=mono_model)
    other = mono_model.__class__(**{**mono_model.__dict__, "weights_sha256": "0" * 64})
    with pytest.raises(ConfigurationError, match="not the run's frozen model"):
        evaluate_run(run["store"], skies[N_INPUTS:], out_dir=tmp_path, baselines=[], model=other)


# --------------------------------------------------------------------------------------------- the flow


@pytest.fixture(scope="module")
def prefect_harness() -> Any:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_evaluate_parameters_validate() -> None:
    from pydantic import ValidationError

    from flows.evaluate import EvaluateParameters

    params = EvaluateParameters(store="s.zarr", reference=["a.fits"], baselines=["finetune", "finetune"])
    assert params.baselines == ["finetune"] and params.finetune_steps == 200 and params.run_id is None
    for bad in ({"reference": []}, {"baselines": ["gan"]}, {"finetune_steps": 0}, {"finetune_steps": 10_000},
                {"device": "tpu"}, {"unknown": 1}, {"reference": [" "]}):
        with pytest.raises(ValidationError):
            EvaluateParameters(**{"store": "s.zarr", "reference": ["a.fits"], **bad})  # type: ignore[arg-type]
    schema = EvaluateParameters.model_json_schema()
    assert all(prop.get("description") for prop in schema["properties"].values())


def test_evaluate_flow_writes_results_and_artifacts(
    prefect_harness: None, run: dict[str, Any], skies: list[str], tmp_path: Path
) -> None:
    from flows.evaluate import EvaluateParameters, evaluate_flow

    params = EvaluateParameters(store=run["store"], reference=skies[N_INPUTS : N_INPUTS + 4],
                                out_dir=str(tmp_path / "ev"), baselines=["augmentation", "in_domain"],
                                n_baseline_samples=3, sample_steps=4, device="cpu")
    state = evaluate_flow(params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert [row["set"] for row in result["table"]] == ["method", "augmentation", "in_domain", "inputs"]
    assert result["run_id"] == run["run_id"] and Path(result["json"]).is_file()
    assert json.loads(Path(result["json"]).read_text())["table"] == result["table"]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read() -> list[Any]:
        async with get_client() as client:
            flow_filter = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_filter))

    import asyncio

    artifacts = asyncio.run(read())
    kinds = [a.type for a in artifacts]
    # Every figure is embedded in the one summary; no image artifact (Prefect prints its URL as text).
    assert kinds == ["markdown"]
    summary = next(a.data for a in artifacts if a.type == "markdown")
    assert "| augmentation |" in summary and "domain_separation" in summary
    assert summary.count("](data:image/png;base64,") == len(result["plots"]) == 7  # c2st.png included
    assert "d_in = RMS distance" in summary
    assert sorted(result["artifacts"]) == sorted(a.key for a in artifacts)


def test_per_image_normalization_paths(run: dict[str, Any], skies: list[str],
                                       mono_model: FrozenDiffusionModel) -> None:
    from ood_core.evaluation import to_physical
    from ood_core.method.normalization import fit_normalization

    provenance = dict(open_run(run["store"], run["run_id"], chunks=None).attrs["ood_run"])
    first = NormalizationParams.from_dict(provenance["normalization"]["params"][0])
    other = NormalizationParams(background=first.background + 1.0, vmin=first.vmin, vmax=2 * first.vmax,
                                units=first.units, mode="per_image")
    provenance["normalization"] = {"mode": "per_image", "params": [first.to_dict(), other.to_dict()]}
    # Each reference image gets its own fit of the same kind.
    loaded = load_reference([skies[N_INPUTS]], provenance, mono_model.resolution, mono_model.channels)
    image = read_fits_image(skies[N_INPUTS])
    plane, _ = resize_to_resolution(image.data, image.mask, mono_model.resolution)
    own = fit_normalization([plane], units=first.units, mode="per_image")
    np.testing.assert_array_equal(loaded.images.physical[0], denormalize(normalize(plane, own), own))
    # Model-space images map back with their parent's parameters; no parent is an error.
    x = torch.zeros((2, 3, 4, 4))
    physical = to_physical(x, [first, other], [1, 0])
    np.testing.assert_allclose(physical[0], denormalize(np.zeros((4, 4)), other))
    np.testing.assert_allclose(physical[1], denormalize(np.zeros((4, 4)), first))
    with pytest.raises(ConfigurationError, match="parent"):
        to_physical(x, [first, other])


def test_novelty_numbers_come_from_the_method_s_own_novelty_module(evaluation: dict[str, Any],
                                                                   run: dict[str, Any]) -> None:
    from ood_core.method.novelty import NoveltyRule, input_nearest_neighbour_distances

    inputs = torch.from_numpy(open_run(run["store"], run["run_id"], chunks=None)["inputs"].values)
    expected = input_nearest_neighbour_distances(inputs)
    assert evaluation["novelty"]["inputs_nn_distances"] == expected.tolist()
    assert evaluation["novelty"]["near_copy_threshold"] == NoveltyRule(factor=0.5).threshold(inputs)
    assert evaluation["novelty"]["invariance"] == "D4"
    record = open_run(run["store"], run["run_id"], chunks=None).attrs["ood_run"]["novelty"]
    assert record["invariance"] == "D4" and record["threshold"] == evaluation["novelty"]["near_copy_threshold"]
    assert evaluation["sets"]["method"]["inputs_nn_median"] == pytest.approx(float(expected.median()))


def test_evaluation_contact_sheet_is_grey_and_readable(evaluation: dict[str, Any]) -> None:
    from matplotlib.image import imread

    pixels = imread(evaluation["plots"]["contact_sheet"])
    assert pixels.shape[0] > 1000 and pixels.shape[1] > 800  # 7 rows of 4-5 panels
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-6)


# --------------------------------------------------------------------------------------------- the run report


def test_run_contact_sheet_in_physical_units_grey_and_explained(
    run: dict[str, Any], skies: list[str], tmp_path: Path
) -> None:
    from matplotlib.image import imread

    from ood_core.evaluation.sheets import _run_physical, run_contact_sheet

    ds = open_run(run["store"], run["run_id"], chunks=None)
    record = ds.attrs["ood_run"]
    sheet = run_contact_sheet(ds, tmp_path / "sheet.png")
    pixels = imread(sheet.path)
    assert pixels.shape[0] > 368 and pixels.shape[1] > 336 * 2  # 3 rows x 4 columns, each panel > 150 px
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 1], atol=1e-6)
    assert sheet.units == "MJy/sr" and "MJy/sr" in sheet.caption
    threshold = record["novelty"]["threshold"]
    assert f"below {threshold:.3f}" in sheet.caption and "d_in = RMS distance" in sheet.caption
    # Rows in physical units: inputs as read from FITS and normalized with the run's parameters; samples as
    # stored in samples_physical.
    rows, units = _run_physical(ds, 8)
    params = NormalizationParams.from_dict(record["normalization"]["params"][0])
    image = read_fits_image(skies[0])
    plane, _ = resize_to_resolution(image.data, image.mask, ds.sizes["y"])
    np.testing.assert_allclose(rows["inputs"][0], denormalize(normalize(plane, params), params), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_array_equal(rows["samples"], ds["samples_physical"].values)
    assert units == "MJy/sr" and rows["reconstructions"].shape == rows["inputs"].shape


def test_report_task_attaches_summary_and_exact_seed_table(prefect_harness: None, run: dict[str, Any]) -> None:
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.report import report_task

    @flow(name="report-only")
    def report_only(result: dict[str, Any]) -> dict[str, Any]:
        return report_task(result, key_prefix="Report Test")

    result = {"store": run["store"], "run_id": run["run_id"], "n_inputs": N_INPUTS, "n_samples": 4}
    state = report_only(result, return_state=True)
    assert state.is_completed(), state
    out = state.result()
    png = Path(out["contact_sheet"])
    assert png.parent == Path(run["store"]).parent and png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(out["artifact_keys"]) == ["report-test-criteria", "report-test-summary"]

    async def read() -> list[Any]:
        async with get_client() as client:
            flow_filter = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_filter))

    artifacts = {a.type: a for a in asyncio.run(read())}
    assert set(artifacts) == {"markdown", "table"}, "no image artifact: Prefect would print its base64 URL"
    summary = artifacts["markdown"].data
    assert summary.count("](data:image/png;base64,") == 1 and "d_in = RMS distance" in summary
    assert "Separable from the model's own domain" in summary and "Gaussian enough" in summary
    assert "<details><summary>" in summary
    table = artifacts["table"].data
    rows = table if isinstance(table, list) else json.loads(table)
    seeds = open_run(run["store"], run["run_id"], chunks=None)["sample_seed"].values
    assert [row["seed"] for row in rows] == [str(int(s)) for s in seeds]
    assert all(int(row["seed"]) == int(s) for row, s in zip(rows, seeds, strict=True))
