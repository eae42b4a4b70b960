"""What a person reads about a run, without a Prefect server: the summary markdown, the prior diagnostics in
words (with their thresholds), the collapsed raw-number table, artifact keys and where PNGs go.

The same pieces on a real run (contact sheet, criteria table, the report task's artifacts) are tested in
test_evaluation.py, which builds one.
"""

from __future__ import annotations

import base64
import html.parser
from pathlib import Path
from typing import Any

import pytest

from ood_core.evaluation import run_summary
from ood_core.evaluation.run_summary import details_table, flatten, prior_verdict, run_summary_markdown
from tasks.artifacts import artifact_key, artifact_path, png_base64


def diagnostics(accuracy: float | None = 0.625, ks: float = 0.076) -> dict[str, Any]:
    separability: dict[str, Any] = {"m": 4, "mean_distance_over_reference_radius": 0.86, "chance_accuracy": 0.5}
    if accuracy is not None:
        separability["loo_balanced_accuracy"] = accuracy
    return {"n": 4, "prior_kind": "scalar", "norm_concentration": {"ratio": 0.8659, "expected_ratio": 0.8660},
            "ks_standardized": {"statistic": ks, "pvalue": 2.4e-249, "n_values": 49152},
            "separability": separability}


@pytest.mark.parametrize(
    ("accuracy", "verdict"), [(1.0, "yes"), (0.9, "yes"), (0.75, "partly"), (0.625, "no"), (None, None)]
)
def test_separability_verdict_follows_the_stated_thresholds(accuracy: float | None, verdict: str | None) -> None:
    result = prior_verdict(diagnostics(accuracy))
    assert result.separable == verdict
    first = result.sentences[0]
    if verdict is None:
        assert "not measured" in first
    else:
        assert f"Separable from the model's own domain: {verdict}" in first
        assert f"{accuracy:.2f}" in first and f">= {run_summary.SEPARABLE_ACCURACY}" in first
        assert "chance 0.50" in first and "4 inverted inputs" in first and "4 latents" in first


@pytest.mark.parametrize(("ks", "gaussian"), [(0.02, True), (0.1, True), (0.25, False)])
def test_gaussian_verdict_follows_the_ks_threshold(ks: float, gaussian: bool) -> None:
    result = prior_verdict(diagnostics(ks=ks))
    assert result.gaussian is gaussian
    second = result.sentences[1]
    assert f"Gaussian enough: {'yes' if gaussian else 'no'}" in second
    assert f"D = {ks:.3f}" in second and f"D <= {run_summary.GAUSSIAN_KS_MAX}" in second
    assert "1.00 x what the prior expects" in second and "scalar prior" in second
    assert prior_verdict({}).gaussian is None


class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_details_table_is_one_html_block_with_every_number() -> None:
    rows = flatten(diagnostics())
    block = details_table("all numbers", rows)
    assert "\n" not in block, "a blank line would end the HTML block in a markdown renderer"
    parsed = _Collect()
    parsed.feed(block)
    assert parsed.tags[:2] == ["details", "summary"] and parsed.tags.count("tr") == len(rows) + 1
    assert "ks_standardized.statistic" in parsed.text and "2.4e-249" in parsed.text
    assert details_table("x", [("a<b", "c&d")]).count("&lt;") == 1


def test_summary_markdown_lists_quarantine_reasons_headline_numbers_and_the_prior_in_words() -> None:
    result = {"run_id": "r1", "store": "/data/s.zarr", "n_inputs": 2, "n_samples": 3}
    record = {
        "status": "complete", "input_set_key": "k" * 64,
        "inputs": [{"path": "/in/a.fits", "sha256": "f" * 64, "shape": [128, 128], "BUNIT": "MJy/sr", "OBJECT": None}],
        "quarantined": [{"path": "/in/bad.fits", "reason": "not a FITS file | really", "error": "NotFitsError"}],
        "inversion": {"t0": 500, "steps": 10, "median_psnr_db": 38.25, "min_psnr_db": 36.0, "max_psnr_db": 40.0},
        "prior": {"diagnostics": diagnostics()},
        "sampler": {"requested": 3, "tried": 256, "accepted": 40, "acceptance_rate": 0.15625},
        "timings": {"invert": 1.5},
    }
    text = run_summary_markdown(result, record, sheet_path=Path("/data/r1_contact.png"), sheet_caption="Rows: ...",
                                sheet_b64="AAAA")
    for expected in ("r1", "/data/s.zarr", "/in/bad.fits", "not a FITS file / really", "38.25", "0.1562",
                     "a.fits", "/data/r1_contact.png", "data:image/png;base64,AAAA", "Rows: ...",
                     "Separable from the model's own domain: no", "Gaussian enough: yes", "<details>",
                     "norm_concentration.ratio"):
        assert expected in text, expected
    # The sentences come before the collapsed numbers; no raw diagnostics table outside <details>.
    assert text.index("Gaussian enough") < text.index("<details>")
    assert "| norm_concentration.ratio |" not in text
    assert flatten({"a": {"b": 1.0}, "c": [1, 2.0]}) == [("a.b", 1.0), ("c", "1, 2.0000")]


def test_artifact_keys_paths_and_embedded_pngs(tmp_path: Path) -> None:
    assert artifact_key("Pipeline_Run 20261125T1800Z-ab") == "pipeline-run-20261125t1800z-ab"
    assert artifact_path(str(tmp_path / "s.zarr"), "r1_contact.png") == tmp_path / "r1_contact.png"
    remote = artifact_path("memory://bucket/s.zarr", "r2_contact.png")
    assert remote.name == "r2_contact.png" and remote.parent.is_dir()
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    assert base64.b64decode(png_base64(png) or "") == png.read_bytes()
    assert png_base64(png, max_bytes=50) is None


def test_flows_and_tasks_share_one_artifact_key_and_gpu_tag() -> None:
    import flows.evaluate
    import tasks.evaluate
    import tasks.report
    from tasks.common import GPU_TAG

    assert tasks.report.artifact_key is artifact_key and tasks.evaluate.artifact_key is artifact_key
    assert not hasattr(flows.evaluate, "artifact_key") and not hasattr(flows.evaluate, "GPU_TAG")
    assert tasks.evaluate.evaluate_task.tags == {GPU_TAG}
