"""Leave-shots-out calibration on the project's own skies (FITS files written and read back) with the shipped model
(few steps, few samples)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from made_sets import SURVEY64, write_sky_set

from ood_cli.main import _calibration_summary, _realism_summary
from ood_core.calibration import Plan, Setting, calibrate, run_calibration, split_shots
from ood_core.calibration.scores import rank_sum, verdict
from ood_core.evaluation.c2st import C2STResult
from ood_core.evaluation.realism import realism_record
from ood_core.evaluation.run_summary import calibration_rows, run_summary_markdown
from ood_core.method.model import FrozenDiffusionModel
from ood_core.pipeline import PipelineParameters, ingest, run_in_process
from ood_core.pipeline.config import settled
from ood_core.pipeline.ingest import IngestResult
from ood_core.pipeline.sequence import settings_record
from ood_core.store import open_run

SLERP = (0.3, 0.7)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def skies(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Six made 64 px fields of compact stars (made_sets.SURVEY64, CCD noise): the few shots of every run here."""
    return write_sky_set(tmp_path_factory.mktemp("skies"), 6, config=SURVEY64)


def params_for(files: list[str], store: Path, **fields: Any) -> PipelineParameters:
    base: dict[str, Any] = {"inputs": files, "store": str(store), "samples": 2, "steps": 3, "reference_count": 3,
                            "device": "cpu", "seed": 3, "batch_size": 8}
    return PipelineParameters(**{**base, **fields})


@pytest.fixture(scope="module")
def shots(skies: list[str], shipped_model: FrozenDiffusionModel) -> IngestResult:
    params = params_for(skies, Path("unused.zarr"))
    return ingest(params, shipped_model.resolution, shipped_model.channels)


COPIES = Setting(30, "slerp_ood_prior", (0.0, 0.02), "scalar")
"""A tiny t0 with a slerp weight near 0: reproduces the kept shots."""
NOISE = Setting(950, "prior", SLERP, "scalar")
"""t0 = 950 prior draws with two DDIM steps: noise."""
SENSIBLE = Setting(400, "slerp_ood_prior", SLERP, "scalar")


def test_calibration_disqualifies_near_copies_and_tells_noise_from_the_shots(
    skies: list[str], shipped_model: FrozenDiffusionModel, shots: IngestResult
) -> None:
    """COPIES would win on fidelity: disqualified, never chosen. NOISE is far from every shot, its pixel
    distribution far from theirs, and the C2ST tells it from them. (Noise given: one row per setting;
    tests/test_noise.py scores noise both ways.) Which of NOISE and SENSIBLE ranks first depends on the source at
    two DDIM steps (on these made skies NOISE's spectrum and source counts can be closer): the real-data test below
    checks the choice on GLIMPSE."""
    params = params_for(skies, Path("unused.zarr"), noise="off")
    plan = Plan((COPIES, NOISE, SENSIBLE), steps=2, per_setting=6, budget=10_000)  # unscreened: references=0
    record = run_calibration(params, shipped_model, shots.batch, plan, split_shots(6, params.seed))
    rows = {row["setting"]["t0"]: row for row in record["table"]}
    assert rows[30]["near_copies"] and rows[30]["scores"]["near_copy_fraction"] > 0.5, rows[30]
    assert not rows[400]["near_copies"] and not rows[950]["near_copies"]
    assert record["chosen"]["t0"] != 30 and record["table"][record["best"]]["setting"] != COPIES.to_dict()
    assert rows[30]["rank_sum"] < min(rows[400]["rank_sum"], rows[950]["rank_sum"])  # best on fidelity alone
    assert rows[950]["scores"]["pixel_w1_rel"] > 5 * rows[400]["scores"]["pixel_w1_rel"]
    assert rows[950]["scores"]["nearest_ratio"] > 3 * rows[400]["scores"]["nearest_ratio"]  # far from any shot
    # network evaluations: 3 t0 x 4 kept shots x 2 steps to invert + 3 settings x 6 samples x 2 steps (t0 = 30
    # has 2 steps too)
    assert record["evaluations_spent"] == 3 * 4 * 2 + 3 * 6 * 2
    assert record["held_out_index"] == split_shots(6, params.seed)[1] and len(record["held_out"]) == 2
    assert rows[950]["scores"]["c2st_accuracy"] >= 0.8  # noise is told from the held-out shots
    # A grid whose only setting makes noise: its samples win by default, and the verdict says they are no skies.
    alone = run_calibration(params, shipped_model, shots.batch, Plan((NOISE,), steps=2, per_setting=6, budget=10_000),
                            split_shots(6, params.seed))
    assert alone["verdict"]["distinguishable"] is True and alone["verdict"]["line"].startswith("DISTINGUISHABLE")
    assert alone["verdict"]["realism"]["accuracy"] >= 0.9
    assert record["verdict"]["distinguishable"] in (True, False) and "C2ST accuracy" in record["verdict"]["line"]
    assert "vs held-out shots, against augmentation of the kept shots" in record["verdict"]["line"]


def test_on_glimpse_a_sensible_setting_ranks_above_noise_and_is_chosen(
    fits_dir: Path, shipped_model: FrozenDiffusionModel
) -> None:
    """Real data: on six GLIMPSE cutouts SENSIBLE beats NOISE on the fidelity rank sum and is chosen."""
    files = [str(p) for p in sorted((fits_dir / "cutouts_128").glob("glimpse_*.fits"))[:6]]
    params = params_for(files, Path("unused.zarr"), noise="off")
    glimpse = ingest(params, shipped_model.resolution, shipped_model.channels)
    plan = Plan((NOISE, SENSIBLE), steps=2, per_setting=6, budget=10_000)
    record = run_calibration(params, shipped_model, glimpse.batch, plan, split_shots(6, params.seed))
    rows = {row["setting"]["t0"]: row for row in record["table"]}
    assert record["chosen"]["t0"] == 400 and record["table"][record["best"]]["setting"] == SENSIBLE.to_dict()
    assert rows[950]["rank_sum"] > rows[400]["rank_sum"], (rows[950], rows[400])
    assert rows[950]["scores"]["pixel_w1_rel"] > 5 * rows[400]["scores"]["pixel_w1_rel"]


def test_split_is_deterministic_and_holds_out_a_third() -> None:
    kept, held = split_shots(9, seed=5)
    assert (kept, held) == split_shots(9, seed=5) and len(held) == 3 and sorted(kept + held) == list(range(9))
    assert any(split_shots(9, seed=s)[1] != held for s in range(6, 12))


def test_rank_sum_ties_and_nan() -> None:
    rows = [{"scores": {"pixel_w1_rel": 1.0, "spectrum_dex": 1.0, "source_count_rel": float("nan"),
                        "c2st_accuracy": 0.3}},
            {"scores": {"pixel_w1_rel": 1.0, "spectrum_dex": 0.5, "source_count_rel": 0.1, "c2st_accuracy": 0.5}},
            {"scores": {"pixel_w1_rel": 2.0, "spectrum_dex": 2.0, "source_count_rel": 0.2, "c2st_accuracy": 0.9}}]
    # a C2ST accuracy below 0.5 is chance: ranked as 0.5 (tied with the second row)
    assert rank_sum(rows) == [1.5 + 2 + 3 + 1.5, 1.5 + 1 + 1 + 1.5, 3 + 3 + 2 + 3]


def test_verdict_says_distinguishable_whatever_the_older_numbers_say(capsys: pytest.CaptureFixture[str]) -> None:
    """Samples better than augmentation on pixel W1, power spectrum and source counts, but told from the shots by
    the C2ST: the verdict, the run summary and `ood run`'s output say so first."""
    ours = {"pixel_w1_rel": 0.1, "spectrum_dex": 0.1, "source_count_rel": 0.1, "c2st_accuracy": 0.9}
    augmented = {"pixel_w1_rel": 0.5, "spectrum_dex": 0.5, "source_count_rel": 0.5, "c2st_accuracy": 0.5}
    told = C2STResult(accuracy=1.0, ci_low=0.6, ci_high=1.0, tile_accuracy=0.97, n_real=10, n_candidate=6,
                      n_tiles=64, folds=5, real_hits=10, candidate_hits=6)
    said = verdict(ours, augmented, told)
    assert said["distinguishable"] is True and said["line"].startswith("DISTINGUISHABLE from real images")
    assert "6 samples vs 10 shots" in said["line"] and "interval includes 0.5" not in said["line"]
    assert [said["per_metric"][n] for n in ("pixel_w1_rel", "spectrum_dex", "source_count_rel")] == ["better"] * 3
    calm = verdict(ours, augmented, replace(told, accuracy=0.55, ci_low=0.2, real_hits=6, candidate_hits=3))
    assert calm["distinguishable"] is False and calm["line"].startswith("not distinguishable")
    assert verdict(ours, augmented, None)["distinguishable"] is None
    record = {"calibration": {"enabled": True, "verdict": said, "table": []}, "settings": {}}
    markdown = run_summary_markdown({"run_id": "r", "store": "s.zarr", "n_samples": 4}, record)
    assert "**WARNING: the samples are distinguishable from real images**" in markdown
    _calibration_summary(record)
    printed = capsys.readouterr()
    assert "verdict    DISTINGUISHABLE" in printed.out and "distinguishable from real images" in printed.err
    run_level = {"distinguishable": True, "accuracy": 0.95, "line": "DISTINGUISHABLE from real images: ..."}
    result = {"run_id": "r", "store": "s.zarr", "n_samples": 4}
    markdown = run_summary_markdown(result, {**record, "realism": run_level})
    assert "distinguishable from real images** (the run's samples against its shots)" in markdown
    _realism_summary({"realism": run_level})
    printed = capsys.readouterr()
    assert "realism    DISTINGUISHABLE" in printed.out and "run's samples are distinguishable" in printed.err
    quiet = {"calibration": {"enabled": True, "verdict": calm, "table": []}, "settings": {}}
    assert "WARNING" not in run_summary_markdown({"run_id": "r", "store": "s.zarr", "n_samples": 4}, quiet)


def test_explicit_settings_are_kept_and_reported(
    skies: list[str], shipped_model: FrozenDiffusionModel, shots: IngestResult
) -> None:
    given = params_for(skies, Path("unused.zarr"), t0=450, strategy="prior", prior="ppca", steps=2,
                       noise="off")
    record = calibrate(given, shipped_model, shots)
    assert record["enabled"] and record["chosen"] == {} and record["given"] == ["noise", "prior", "strategy", "t0"]
    assert [row["setting"] for row in record["table"]] == [Setting(450, "prior", SLERP, "ppca").to_dict()]
    settings = settings_record(given, record)
    assert (settings["t0"], settings["strategy"], settings["prior"]) == (450, "prior", "ppca")
    assert set(settings["from"].values()) == {"given", "default"}  # slerp_range: default

    partly = params_for(skies, Path("unused.zarr"), t0=450, steps=2)
    record = calibrate(partly, shipped_model, shots)
    assert {row["setting"]["t0"] for row in record["table"]} == {450} and len(record["table"]) == 12  # noise both
    assert "t0" not in record["chosen"] and {"strategy", "prior", "noise"} <= set(record["chosen"])
    resolved = settled(partly, {"settings": settings_record(partly, record)})
    assert resolved.t0 == 450 and resolved.strategy == record["chosen"]["strategy"]


def test_calibration_off_below_six_shots_or_when_asked(
    skies: list[str], shipped_model: FrozenDiffusionModel, shots: IngestResult
) -> None:
    few = params_for(skies[:5], Path("unused.zarr"))
    five = ingest(few, shipped_model.resolution, shipped_model.channels)
    record = calibrate(few, shipped_model, five)
    assert not record["enabled"] and "5 usable shots" in record["reason"] and record["chosen"] == {}
    off = calibrate(params_for(skies, Path("unused.zarr"), calibrate=False), shipped_model, shots)
    assert not off["enabled"] and "--no-calibrate" in off["reason"]
    assert settings_record(few, record)["t0"] == 600  # the defaults, said to be defaults
    assert set(settings_record(few, record)["from"].values()) == {"default"}


def test_calibrated_run_uses_the_choice_records_it_and_is_deterministic(
    skies: list[str], shipped_model: FrozenDiffusionModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = []
    for name in ("a", "b"):
        params = params_for(skies, tmp_path / f"{name}.zarr", steps=2)
        results.append(run_in_process(params, choose=calibrate, judge=realism_record))
    records = [dict(open_run(r.store, r.run_id, chunks=None).attrs["ood_run"]) for r in results]
    calibration, settings = records[0]["calibration"], records[0]["settings"]
    assert calibration["enabled"] and calibration["budget_evaluations"] == 2 * (6 + 3 + 2)
    assert calibration["references"] == 3 and "screening" in calibration["screening"]
    assert all(0 <= row["scores"]["acceptance"] <= 1 for row in calibration["table"])
    assert settings["from"]["t0"] == "calibration" and settings["t0"] == calibration["chosen"]["t0"]
    assert records[0]["inversion"]["t0"] == settings["t0"] and records[0]["timings"]["calibrate"] > 0
    assert records[0]["prior"]["kind"] == settings["prior"]
    assert records[0]["sampler"]["config"]["strategy"] == settings["strategy"]
    assert records[0]["sampler"]["config"]["slerp_range"] == settings["slerp_range"]
    assert records[0]["parameters"]["t0"] is None  # what the user gave, verbatim
    assert calibration["table"] == records[1]["calibration"]["table"]
    samples = [open_run(r.store, r.run_id, chunks=None)["samples"].values for r in results]
    np.testing.assert_array_equal(samples[0], samples[1])
    rows = calibration_rows(records[0])
    assert len(rows) == len(calibration["table"]) and sum(r["chosen"] == "yes" for r in rows) == 1
    # the end of the run judged its own samples against its 6 shots (provenance "realism", the summary, ood run)
    judged = records[0]["realism"]
    assert (judged["n_shots"], judged["n_samples"]) == (6, 2) and 0 <= judged["accuracy"] <= 1
    assert results[0].summary["realism"] == judged and records[0]["timings"]["judge"] > 0
    measured = [row["c2st_accuracy"] for row in rows if row["c2st_accuracy"] is not None]  # None: no sample
    assert measured and all(0 <= value <= 1 for value in measured)
    assert calibration["verdict"]["realism"]["augmentation_accuracy"] is not None
    realism = calibration["verdict"]["realism"]
    assert (realism["n_shots"], realism["n_samples"]) == (6, calibration["samples_per_setting"])
    assert calibration["verdict"]["line"].startswith("DISTINGUISHABLE" if realism["distinguishable"] else "not ")
    markdown = run_summary_markdown(results[0].to_dict(), records[0])
    assert "## Settings and calibration" in markdown and calibration["verdict"]["line"] in markdown
    assert results[0].summary["calibration"]["chosen"] == calibration["chosen"]
    _realism_summary(results[0].to_dict()["summary"])  # what `ood run` prints after a run
    _calibration_summary(results[0].to_dict()["summary"])
    printed = capsys.readouterr().out
    assert f"realism    {judged['line']}" in printed
    assert f"t0 {settings['t0']} (calibration)" in printed and printed.count("<- chosen") == 1
    assert f"{calibration['evaluations_spent']} network evaluations" in printed
    assert f"verdict    {calibration['verdict']['line']}" in printed and "C2ST" in printed
