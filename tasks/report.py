"""Report task: the run's markdown summary, per-sample criteria table and contact sheet, as Prefect artifacts."""

from __future__ import annotations

import base64
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ood_core.store import open_run

CONTACT_ROWS = 8
"""Columns of the contact sheet: at most this many inputs, reconstructions and samples."""


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100]


def contact_sheet_path(store: str, run_id: str) -> Path:
    """<store-parent>/<run_id>_contact.png for a local store; a temporary folder for remote URLs."""
    if "://" in store and not store.startswith("file://"):
        folder = Path(tempfile.gettempdir()) / "ood-artifacts"
    else:
        folder = Path(store.removeprefix("file://")).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_id}_contact.png"


def _display(image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """(C, H, W) in [-1, 1] -> (H, W[, 3]) in [0, 1] for imshow."""
    x = np.clip((np.asarray(image, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def write_contact_sheet(ds: Any, path: Path, columns: int = CONTACT_ROWS) -> Path:
    """Rows: inputs, their reconstructions (with PSNR), samples (with nearest-input distance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = ds["inputs"].values[:columns]
    recons = ds["reconstructions"].values[:columns]
    psnr = ds["reconstruction_psnr"].values[:columns]
    samples = ds["samples"].values[:columns]
    distance = ds["sample_nearest_input_distance"].values[:columns]
    n = max(len(inputs), len(samples), 1)
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6), squeeze=False)
    for row, (label, images, notes) in enumerate((
        ("inputs", inputs, [""] * len(inputs)),
        ("reconstructions", recons, [f"{p:.1f} dB" for p in psnr]),
        ("samples", samples, [f"d={d:.3f}" for d in distance]),
    )):
        for col in range(n):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(images):
                ax.imshow(_display(images[col]), cmap="gray", vmin=0, vmax=1)
                ax.set_title(notes[col], fontsize=7)
            else:
                ax.axis("off")
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(f"run {ds.attrs['ood_run']['run_id']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def summary_markdown(result: dict[str, Any], record: dict[str, Any], png: Path | None, png_b64: str | None) -> str:
    """The run summary a person reads in the Prefect UI."""
    inputs = record.get("inputs") or []
    quarantined = record.get("quarantined") or []
    inversion = record.get("inversion") or {}
    diagnostics = (record.get("prior") or {}).get("diagnostics") or {}
    sampler = record.get("sampler") or {}
    lines = [
        f"# ood-synth run `{result['run_id']}`",
        "",
        f"- **store**: `{result['store']}`",
        f"- **run id**: `{result['run_id']}` (status {record.get('status')})",
        f"- **inputs used**: {result['n_inputs']}, **quarantined**: {len(quarantined)}",
        f"- **t0 / steps**: {inversion.get('t0')} / {inversion.get('steps')}",
        f"- **reconstruction PSNR**: median {_fmt(inversion.get('median_psnr_db'), 2)} dB "
        f"(min {_fmt(inversion.get('min_psnr_db'), 2)}, max {_fmt(inversion.get('max_psnr_db'), 2)})",
        f"- **samples**: {result['n_samples']} of {sampler.get('requested')} requested; "
        f"candidates tried {sampler.get('tried')}, accepted {sampler.get('accepted')}, "
        f"**acceptance rate** {_fmt(sampler.get('acceptance_rate'), 4)}",
        f"- **input set key**: `{record.get('input_set_key')}`",
        "",
        "## Inputs",
        "",
        "| # | file | sha256 | shape | BUNIT | OBJECT |",
        "|---|---|---|---|---|---|",
    ]
    for i, src in enumerate(inputs):
        lines.append(f"| {i} | `{Path(str(src.get('path'))).name}` | `{str(src.get('sha256'))[:12]}` | "
                     f"{src.get('shape')} | {_fmt(src.get('BUNIT'))} | {_fmt(src.get('OBJECT'))} |")
    lines += ["", "## Quarantined inputs", ""]
    if quarantined:
        lines += ["| file | reason | error |", "|---|---|---|"]
        lines += [f"| `{q.get('path')}` | {str(q.get('reason')).replace('|', '/')} | {q.get('error')} |"
                  for q in quarantined]
    else:
        lines.append("none")
    lines += ["", "## Prior diagnostics", "", "| statistic | value |", "|---|---|"]
    for name, value in _flatten(diagnostics):
        lines.append(f"| {name} | {_fmt(value, 4)} |")
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v, 2)} |" for k, v in (record.get("timings") or {}).items()]
    lines += ["", "## Contact sheet (inputs, reconstructions, samples)", ""]
    if png is not None:
        lines.append(f"Saved to `{png}`.")
        lines.append("")
    if png_b64:
        lines.append(f"![contact sheet](data:image/png;base64,{png_b64})")
    return "\n".join(lines)


def _flatten(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(values, dict):
        for key, value in values.items():
            out += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(values, list):
        if len(values) <= 4 and all(not isinstance(v, (dict, list)) for v in values):
            out.append((prefix, ", ".join(_fmt(v, 4) for v in values)))
    else:
        out.append((prefix, values))
    return out


def criteria_rows(ds: Any) -> list[dict[str, Any]]:
    """Per-sample table rows (plain Python numbers)."""
    names = [str(n) for n in ds["criterion"].values]
    criteria = ds["sample_criteria"].values
    rows = []
    for i in range(int(ds.sizes.get("sample", 0))):
        row: dict[str, Any] = {
            "sample": i,
            "seed": int(ds["sample_seed"].values[i]),
            "parent": int(ds["sample_parent"].values[i]),
        }
        row.update({name: round(float(criteria[i, j]), 4) for j, name in enumerate(names)})
        row["nearest_input_distance"] = round(float(ds["sample_nearest_input_distance"].values[i]), 5)
        rows.append(row)
    return rows


@task(name="report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def report_task(result: dict[str, Any], key_prefix: str = "ood-run") -> dict[str, Any]:
    """Attach the summary, the criteria table and the contact sheet to the flow run; returns keys and paths."""
    ds = open_run(result["store"], result["run_id"], chunks=None)
    record = dict(ds.attrs["ood_run"])
    png = write_contact_sheet(ds, contact_sheet_path(result["store"], result["run_id"]))
    png_b64 = base64.b64encode(png.read_bytes()).decode() if png.stat().st_size < 2_000_000 else None
    prefix = artifact_key(key_prefix)
    keys = {"summary": f"{prefix}-summary", "criteria": f"{prefix}-criteria", "contact": f"{prefix}-contact-sheet"}
    create_markdown_artifact(summary_markdown(result, record, png, png_b64), key=keys["summary"],
                             description=f"ood-synth run {result['run_id']}")
    create_table_artifact(criteria_rows(ds), key=keys["criteria"],
                          description=f"per-sample criteria of run {result['run_id']}")
    if png_b64:
        create_image_artifact(f"data:image/png;base64,{png_b64}", key=keys["contact"],
                              description=f"contact sheet of run {result['run_id']} ({png})")
    return {"artifact_keys": sorted(keys.values()), "contact_sheet": os.fspath(png)}
