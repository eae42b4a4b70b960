"""The report step of an evaluation: PNG figures, ``evaluation.json`` (strict JSON), the table as text.

``evaluation_markdown`` is the summary a person reads (the Prefect UI shows it as a markdown artifact):
the table, what each metric means, and the figures, embedded when the caller passes them as base64.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ood_core.evaluation import plots, sheets
from ood_core.evaluation.counts import COUNTS_METRIC_DOCS
from ood_core.evaluation.loading import ImageSet
from ood_core.evaluation.metrics import METRIC_DOCS, MINKOWSKI_QUANTILES
from ood_core.evaluation.scoring import Scores, table_columns
from ood_core.store.provenance import json_safe, strict_json_dumps


def write_plots(
    out: Path, sets: Mapping[str, ImageSet], reference: ImageSet, scores: Scores, *, units: str
) -> dict[str, Path]:
    """Every figure of the evaluation under ``out``: name -> PNG path."""
    display = {"reference": reference.physical, **{k: v.physical for k, v in sets.items()}}
    stats = scores.statistics
    distances = {k: v["nearest_input_distances"] for k, v in scores.per_set.items() if k != "inputs"}
    novelty = scores.novelty
    realism = {k: v for k, v in scores.per_set.items() if v.get("c2st_accuracy") is not None}
    extra = {"c2st": plots.c2st_accuracies(realism, out / "c2st.png")} if realism else {}
    return {
        "contact_sheet": sheets.contact_sheet(
            display, out / "contact_sheet.png", display_reference="reference", units=units,
            labels={k: sheets.distance_labels(v, novelty["near_copy_threshold"]) for k, v in distances.items()},
            footnote=sheets.distance_note(novelty["near_copy_threshold"], novelty["factor"])),
        "power_spectra": plots.power_spectra({k: s.spectrum for k, s in stats.items()}, out / "power_spectra.png",
                                             units=units),
        "pixel_histograms": plots.pixel_histograms(display, out / "pixel_histograms.png", units=units),
        "morphology": plots.morphology_panels({k: s.morphology for k, s in stats.items()}, out / "morphology.png"),
        "minkowski": plots.minkowski_panels({k: s.minkowski for k, s in stats.items()}, out / "minkowski.png",
                                            units=units, quantiles=MINKOWSKI_QUANTILES),
        "novelty": plots.novelty_histograms(distances, out / "novelty.png", inputs_nn=novelty["inputs_nn_distances"],
                                            threshold=novelty["near_copy_threshold"]),
        **extra,
    }


def write_json(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write ``result`` (plus its own path under ``json``) as strict JSON; return what the file holds."""
    result["json"] = str(path)
    path.write_text(strict_json_dumps(json_safe(result), indent=2))
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def format_table(result: dict[str, Any], *, markdown: bool = True) -> str:
    """The summary table of an ``evaluate_run`` result (markdown, or fixed-width text)."""
    columns = table_columns(result.get("sets", {}))
    headers = ["set", "n", *[short for _, short in columns]]
    lines = []
    for row in result["table"]:
        cells = [str(row["set"]), str(row["n"])]
        for key, _ in columns:
            value = row.get(key)
            cells.append("-" if value is None else f"{value:.3g}")
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), *(fmt.format(*cells) for cells in lines)])


def realism_lines(result: dict[str, Any]) -> list[str]:
    """Which sets a classifier tells from the reference (C2ST), in words: first, whatever the other columns say."""
    sets = result.get("sets", {})
    told = [f"`{name}` ({values['c2st_accuracy']:.2f})" for name, values in sets.items()
            if values.get("c2st_distinguishable")]
    method = sets.get("method", {})
    if method.get("c2st_accuracy") is None:
        return []
    head = ("**The run's samples are distinguishable from the reference images**" if method.get("c2st_distinguishable")
            else "The run's samples are not distinguishable from the reference images at this size")
    return [f"{head}: C2ST accuracy {method['c2st_accuracy']:.2f} [{method['c2st_ci_low']:.2f}, "
            f"{method['c2st_ci_high']:.2f}] (0.5: indistinguishable). Told apart (accuracy >= 0.8): "
            + (", ".join(told) or "none") + ".", ""]


def evaluation_markdown(result: dict[str, Any], embedded: Mapping[str, str]) -> str:
    """The evaluation summary: table, what each metric means, the plots (``embedded``: name -> base64 PNG)."""
    reference = result.get("reference", {})
    novelty = result.get("novelty", {})
    counts_run = bool(reference.get("statistics", {}).get("counts"))
    lines = [
        f"# Evaluation of run `{result.get('run_id')}`",
        "",
        f"- **store**: `{result.get('store')}`",
        f"- **reference**: {reference.get('n')} real images; excluded as inputs: {len(reference.get('excluded', []))}; "
        f"quarantined: {len(reference.get('quarantined', []))}",
        f"- **units**: {result.get('units') or 'none'}",
        f"- **JSON**: `{result.get('json')}`",
        "",
        "## Method vs baselines (each row against the reference)",
        "",
        format_table(result),
        "",
        "`inputs` is the few-shot set itself: the value a metric reaches with real images of the domain.",
        "",
        *realism_lines(result),
        "## Metrics",
        "",
        "| metric | meaning |",
        "|---|---|",
        *[f"| {name} | {doc} |" for name, doc in METRIC_DOCS.items()],
        *([f"| {name} | {doc} |" for name, doc in COUNTS_METRIC_DOCS.items()] if counts_run else []),
        "",
        "## Plots",
        "",
    ]
    for name, path in result.get("plots", {}).items():
        lines += [f"### {name.replace('_', ' ')}", "", f"`{path}`"]
        if name == "contact_sheet":
            lines += ["", sheets.distance_note(novelty.get("near_copy_threshold"), novelty.get("factor"))]
        if name in embedded:
            lines += ["", f"![{name}](data:image/png;base64,{embedded[name]})"]
        lines.append("")
    return "\n".join(lines)
