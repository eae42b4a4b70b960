"""What a person reads about one run: the summary (markdown), the per-sample table, the prior in words.

``prior_verdict`` turns the stored prior diagnostics (``ood_core.method.prior.prior_diagnostics``) into two
sentences with the thresholds they use: are the inverted inputs separable from the model's own domain (a
linear classifier's leave-one-out balanced accuracy against latents of the model's own samples), and are
they Gaussian enough for the fitted prior (Kolmogorov-Smirnov distance of the standardized coordinates from
N(0, 1)). The raw numbers stay available in a collapsed table.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEPARABLE_ACCURACY = 0.9
"""Leave-one-out balanced accuracy at or above which the OOD latents count as separable from the in-domain ones."""
PARTLY_SEPARABLE_ACCURACY = 0.7
"""... and at or above which they count as partly separable (below: not separable)."""
GAUSSIAN_KS_MAX = 0.1
"""Largest KS distance D of the standardized latent coordinates from N(0, 1) that counts as Gaussian enough."""


@dataclass(frozen=True)
class PriorVerdict:
    """The prior diagnostics in words: separable ("yes"/"partly"/"no"/None), Gaussian enough (bool/None)."""

    separable: str | None
    gaussian: bool | None
    sentences: tuple[str, ...]


def _separability_sentence(diagnostics: dict[str, Any]) -> tuple[str | None, str]:
    sep = diagnostics.get("separability") or {}
    accuracy = sep.get("loo_balanced_accuracy")
    if accuracy is None:
        return None, ("Separability from the model's own domain was not measured (fewer than 2 reference latents "
                      "of the model's own samples).")
    n, m = diagnostics.get("n"), sep.get("m")
    verdict = ("yes" if accuracy >= SEPARABLE_ACCURACY else
               "partly" if accuracy >= PARTLY_SEPARABLE_ACCURACY else "no")
    meaning = {
        "yes": "the inputs' latents sit apart from the model's own, as the method needs",
        "partly": "the inputs' latents overlap the model's own in part; some samples may drift into its domain",
        "no": ("the inputs' latents look like the model's own, so samples may fall back into its domain "
               "(a smaller t0 keeps more of the inputs' structure)"),
    }[verdict]
    ratio = sep.get("mean_distance_over_reference_radius")
    centres = f"; the two clouds' centres are {ratio:.2f} in-domain radii apart" if ratio is not None else ""
    return verdict, (
        f"**Separable from the model's own domain: {verdict}**: a linear classifier tells the {n} inverted inputs "
        f"from {m} latents of the model's own samples with leave-one-out balanced accuracy {accuracy:.2f} "
        f"(chance {sep.get('chance_accuracy', 0.5):.2f}; separable at >= {SEPARABLE_ACCURACY}, partly at >= "
        f"{PARTLY_SEPARABLE_ACCURACY}){centres}: {meaning}."
    )


def _gaussian_sentence(diagnostics: dict[str, Any], prior_kind: str) -> tuple[bool | None, str]:
    ks = (diagnostics.get("ks_standardized") or {}).get("statistic")
    if ks is None:
        return None, "Gaussianity of the latents was not measured."
    gaussian = bool(ks <= GAUSSIAN_KS_MAX)
    norm = diagnostics.get("norm_concentration") or {}
    radius = ""
    if norm.get("ratio") is not None and norm.get("expected_ratio"):
        radius = (f"; their distances from the mean are {norm['ratio'] / norm['expected_ratio']:.2f} x what the "
                  "prior expects")
    meaning = ("the Gaussian prior describes them" if gaussian else
               "the Gaussian prior describes them only roughly, so its draws differ from real inverted inputs "
               "(a larger t0 makes latents more Gaussian)")
    return gaussian, (
        f"**Gaussian enough: {'yes' if gaussian else 'no'}**: the standardized latent coordinates differ from "
        f"N(0, 1) by a Kolmogorov-Smirnov distance D = {ks:.3f} (Gaussian enough at D <= {GAUSSIAN_KS_MAX}) "
        f"under the {prior_kind} prior{radius}: {meaning}."
    )


def prior_verdict(diagnostics: dict[str, Any]) -> PriorVerdict:
    """Two sentences on the prior diagnostics of a run, computed from its numbers with stated thresholds."""
    separable, first = _separability_sentence(diagnostics)
    gaussian, second = _gaussian_sentence(diagnostics, str(diagnostics.get("prior_kind", "fitted")))
    return PriorVerdict(separable, gaussian, (first, second))


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}" if 1e-3 <= abs(value) < 1e6 or value == 0 else f"{value:.{digits}g}"
    return "-" if value is None else str(value)


def flatten(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> (dotted name, value); short lists of scalars joined, longer lists left out."""
    out: list[tuple[str, Any]] = []
    if isinstance(values, dict):
        for key, value in values.items():
            out += flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(values, list):
        if len(values) <= 4 and all(not isinstance(v, (dict, list)) for v in values):
            out.append((prefix, ", ".join(_fmt(v, 4) for v in values)))
    else:
        out.append((prefix, values))
    return out


def details_table(summary: str, rows: list[tuple[str, Any]]) -> str:
    """A collapsed HTML table (one block, no blank line, so markdown renderers keep it in one piece)."""
    cells = "".join(f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(_fmt(value, 4))}</td></tr>"
                    for name, value in rows)
    return (f"<details><summary>{html.escape(summary)}</summary>"
            f"<table><thead><tr><th>statistic</th><th>value</th></tr></thead><tbody>{cells}</tbody></table></details>")


def _headline(result: dict[str, Any], record: dict[str, Any]) -> list[str]:
    inversion = record.get("inversion") or {}
    sampler = record.get("sampler") or {}
    return [
        f"# ood-synth run `{result['run_id']}`",
        "",
        f"- **store**: `{result['store']}`",
        f"- **run id**: `{result['run_id']}` (status {record.get('status')})",
        f"- **inputs used**: {result.get('n_inputs', len(record.get('inputs') or []))}, "
        f"**quarantined**: {len(record.get('quarantined') or [])}",
        *resampling_lines(record),
        *frame_lines(record),
        f"- **t0 / steps**: {inversion.get('t0')} / {inversion.get('steps')}",
        f"- **reconstruction PSNR**: median {_fmt(inversion.get('median_psnr_db'), 2)} dB "
        f"(min {_fmt(inversion.get('min_psnr_db'), 2)}, max {_fmt(inversion.get('max_psnr_db'), 2)})",
        f"- **samples**: {result.get('n_samples')} of {sampler.get('requested')} requested; "
        f"candidates tried {sampler.get('tried')}, accepted {sampler.get('accepted')}, "
        f"**acceptance rate** {_fmt(sampler.get('acceptance_rate'), 4)}"
        + (f" (**warning**: {sampler['warning']})" if sampler.get("warning") else ""),
        f"- **input set key**: `{record.get('input_set_key')}`",
        *realism_lines(record),
    ]


def frame_sentence(frame: dict[str, Any]) -> str:
    """One input frame's geometry in words (a provenance ``frames`` record)."""
    name = Path(str(frame.get("path"))).name
    shape = "x".join(str(n) for n in frame.get("shape") or [])
    if frame.get("geometry") != "tiles":
        return f"`{name}` ({shape}): used whole, {frame.get('reason')}"
    dropped = ", ".join(f"{n} {why}" for why, n in (frame.get("tiles_dropped") or {}).items() if n) or "none"
    return (f"`{name}` ({shape}): {frame.get('kept')} of {frame.get('tiles_cut')} tiles kept; dropped: {dropped}; "
            f"not selected: {frame.get('tiles_not_selected')}; {frame.get('reason')}")


def frame_lines(record: dict[str, Any]) -> list[str]:
    """What was done to each input frame (provenance ``frames``) and the warnings on inputs that may not belong
    together (provenance ``input_warnings``), as markdown list items."""
    lines = [f"- **frame**: {frame_sentence(frame)}" for frame in record.get("frames") or []]
    return lines + [f"- **WARNING (inputs)**: {line}" for line in record.get("input_warnings") or []]


def resampling_lines(record: dict[str, Any]) -> list[str]:
    """How input blocks became model pixels (provenance ``normalization.resampling``: one rule, or one per band)."""
    rules = (record.get("normalization") or {}).get("resampling") or []
    band = [f" (band {k})" if len(rules) > 1 else "" for k in range(len(rules))]
    return [f"- **resampling**{b}: block {r.get('rule')}, {r.get('reason')}" for b, r in zip(band, rules, strict=True)]


def realism_lines(record: dict[str, Any]) -> list[str]:
    """Can a classifier tell the samples from real images? The run's own samples against its shots (provenance
    ``realism``), then the calibration's verdict on its samples; first and plain."""
    lines = []
    tested = [(record.get("realism") or {}, "the run's samples against its shots"),
              (((record.get("calibration") or {}).get("verdict") or {}).get("realism") or {},
               "the chosen setting's calibration samples")]
    for realism, what in tested:
        if realism.get("distinguishable") is None:
            continue
        if realism["distinguishable"]:
            lines.append(f"- **WARNING: the samples are distinguishable from real images** ({what}): "
                         f"{realism.get('line')}")
        else:
            lines.append(f"- **realism** ({what}): {realism.get('line')}")
    return lines


def _inputs_and_quarantine(record: dict[str, Any]) -> list[str]:
    lines = ["## Inputs", "", "| # | file | sha256 | region | shape | block | BUNIT | OBJECT |",
             "|---|---|---|---|---|---|---|---|"]
    for i, src in enumerate(record.get("inputs") or []):
        lines.append(f"| {i} | `{Path(str(src.get('path'))).name}` | `{str(src.get('sha256'))[:12]}` | "
                     f"{_fmt(src.get('plane'))} | {src.get('shape')} | {_fmt(src.get('block'))} | "
                     f"{_fmt(src.get('BUNIT'))} | {_fmt(src.get('OBJECT'))} |")
    quarantined = record.get("quarantined") or []
    lines += ["", "## Quarantined inputs", ""]
    if not quarantined:
        return [*lines, "none"]
    lines += ["| file | reason | error |", "|---|---|---|"]
    return lines + [f"| `{q.get('path')}` | {str(q.get('reason')).replace('|', '/')} | {q.get('error')} |"
                    for q in quarantined]


CALIBRATION_COLUMNS = ("pixel_w1_rel", "spectrum_dex", "source_count_rel", "source_count_mean", "c2st_accuracy",
                       "near_copy_fraction", "nearest_ratio", "acceptance")


def calibration_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The calibration table (provenance ``calibration``): one row per setting, its scores, rank sum, chosen."""
    calibration = record.get("calibration") or {}
    rows = []
    for i, row in enumerate(calibration.get("table") or []):
        setting = row.get("setting") or {}
        lam = setting.get("slerp_range") or []
        out: dict[str, Any] = {
            "t0": setting.get("t0"), "strategy": setting.get("strategy"),
            "slerp": "-" if setting.get("strategy") == "prior" else "-".join(_fmt(v, 2) for v in lam),
            "prior": setting.get("prior"), "noise": setting.get("noise", "off"),
        }
        values = row.get("scores") or {}
        out.update({name: None if values.get(name) is None else round(float(values[name]), 4)
                    for name in CALIBRATION_COLUMNS})  # NaN is stored as None (nothing passed the screening)
        out["rank_sum"] = row.get("rank_sum")
        out["disqualified"] = row.get("disqualified") or ""
        out["chosen"] = "yes" if i == calibration.get("best") else ""
        rows.append(out)
    return rows


def calibration_lines(record: dict[str, Any]) -> list[str]:
    """The run's settings, where they came from, and the calibration (table, verdict, cost) as markdown."""
    settings = record.get("settings") or {}
    origin = settings.get("from") or {}
    lines = ["## Settings and calibration", ""]
    lines += [f"- **{name}**: {_fmt(settings.get(name))} ({origin.get(name, '-')})"
              for name in ("t0", "strategy", "prior", "slerp_range", "noise") if name in settings]
    calibration = record.get("calibration") or {}
    if not calibration.get("enabled"):
        return [*lines, f"- calibration: off ({calibration.get('reason', 'not run')})"]
    held = ", ".join(f"`{Path(str(p)).name}`" for p in calibration.get("held_out") or [])
    lines += [f"- held-out shots: {held}",
              f"- cost: {calibration.get('evaluations_spent')} network evaluations (budget "
              f"{calibration.get('budget_evaluations')}: a plain run's), {calibration.get('steps')} DDIM steps, "
              f"{calibration.get('samples_per_setting')} samples per setting, {calibration.get('screening')}; "
              f"{_fmt(calibration.get('seconds'), 1)} s",
              f"- ranking: {calibration.get('ranking')}",
              f"- **verdict**: {(calibration.get('verdict') or {}).get('line', '-')}"]
    if calibration.get("note"):
        lines.append(f"- note: {calibration['note']}")
    rows = calibration_rows(record)
    if rows:
        lines += ["", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(_fmt(v) for v in row.values()) + " |" for row in rows]
    return lines


def run_summary_markdown(
    result: dict[str, Any], record: dict[str, Any], *, sheet_path: Path | None = None, sheet_caption: str = "",
    sheet_b64: str | None = None,
) -> str:
    """The run summary a person reads in the Prefect UI; the contact sheet is embedded when ``sheet_b64``."""
    diagnostics = (record.get("prior") or {}).get("diagnostics") or {}
    rows = flatten(diagnostics)
    lines = [*_headline(result, record), "", "## Contact sheet", ""]
    if sheet_caption:
        lines += [sheet_caption, ""]
    if sheet_b64:
        lines += [f"![contact sheet](data:image/png;base64,{sheet_b64})", ""]
    if sheet_path is not None:
        lines += [f"Saved to `{sheet_path}`.", ""]
    lines += [*calibration_lines(record), ""]
    lines += ["## Prior diagnostics", "", *(f"- {s}" for s in prior_verdict(diagnostics).sentences), ""]
    lines += [details_table(f"all {len(rows)} diagnostic numbers", rows), ""]
    lines += _inputs_and_quarantine(record)
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v, 2)} |" for k, v in (record.get("timings") or {}).items()]
    return "\n".join(lines)


def criteria_rows(ds: Any) -> list[dict[str, Any]]:
    """Per-sample table rows; seeds as strings (a browser rounds integers above 2**53)."""
    names = [str(n) for n in ds["criterion"].values]
    criteria = ds["sample_criteria"].values
    rows = []
    for i in range(int(ds.sizes.get("sample", 0))):
        row: dict[str, Any] = {
            "sample": i,
            "seed": str(int(ds["sample_seed"].values[i])),
            "parent": int(ds["sample_parent"].values[i]),
        }
        row.update({name: round(float(criteria[i, j]), 4) for j, name in enumerate(names)})
        row["nearest_input_distance"] = round(float(ds["sample_nearest_input_distance"].values[i]), 5)
        rows.append(row)
    return rows
