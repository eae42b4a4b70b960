"""The `ood` console command (DESIGN section 6b).

Exit codes: 0 done (quarantined inputs are listed, not fatal); 2 bad usage or no usable input, nothing
written; 1 the run failed (its group in the store is marked "failed").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ood_cli.terminal import TerminalProgress, Verbosity, configure_output

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEMO_IMAGES = 12
DEMO_PRIOR = "ppca"

# The temporary Prefect server (no PREFECT_API_URL) gets 20 s to start by default; a busy 2-core machine
# needs more. Set before Prefect is imported, and only where the user has not chosen a value.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ood-synth")
    except PackageNotFoundError:
        return "unknown (not installed)"


class UsageError(Exception):
    """Bad usage that argparse cannot see (for example a resolution the model does not have)."""


def _say(text: str = "") -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(f"ood: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- run / demo


def _pipeline_arguments(parser: argparse.ArgumentParser, *, demo: bool) -> None:
    parser.add_argument("--model", help="diffusers model folder or hub id (default auto: the shipped model for "
                                        "the number of bands, models/mono64 for single-band inputs, "
                                        "models/base64 for three-band groups)")
    parser.add_argument("--samples", type=int, help="number of accepted samples (default 16)")
    parser.add_argument("--seed", type=int, help="seed of the whole run (default 0)")
    t0 = parser.add_mutually_exclusive_group()
    t0.add_argument("--t0", type=int, help="inversion bandwidth: timestep of the latents (default: chosen by the "
                                           "calibration, else 600)")
    t0.add_argument("--auto-t0", action="store_true", help="scan t0 and take the largest meeting the PSNR bar")
    parser.add_argument("--steps", type=int, help="DDIM steps K between 0 and t0 (default 40)")
    parser.add_argument("--eta", type=float, help="DDIM noise in generation, 0 = deterministic (default 0)")
    parser.add_argument("--prior", choices=["scalar", "ppca"], help="OOD prior family (default: chosen by the "
                                                                                 "calibration, else scalar)")
    parser.add_argument("--candidate-budget", type=int, help="most candidates screened (default 20000)")
    parser.add_argument("--resolution", type=int, help="model resolution expected (checked against the model)")
    parser.add_argument("--batch-size", type=int,
                        help="images per network evaluation (default: 16 on the CPU, from free GPU memory on CUDA)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the network runs (default auto)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                        help="network dtype (default auto: bfloat16 on CUDA, guarded by the reconstruction check)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA; ~30 s to compile)")
    parser.add_argument("--shards", type=int,
                        help="split the sample stage into N shards run as tasks on a Dask cluster (same samples)")
    parser.add_argument("--dask-address", help="Dask scheduler for the shards, e.g. tcp://host:8786 (default: a "
                                               "local cluster, one worker per shard)")
    parser.add_argument("--strategy", choices=["prior", "slerp_ood_prior", "slerp_ood_ood"],
                        help="how candidates are drawn (default: chosen by the calibration, else slerp_ood_prior)")
    parser.add_argument("--noise", choices=["on", "off"],
                        help="add background noise matching the inputs' (level and power spectrum) to each sample, "
                             "in physical units (default: chosen by the calibration, else off)")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                        help="leave-shots-out calibration of the settings not given (--t0, --strategy, --prior, "
                             "--noise) before the run (default: on with at least 6 usable shots)")
    parser.add_argument("--reference-count", type=int, help="in-domain reference latents (default 16)")
    parser.add_argument("--novelty-factor", type=float,
                        help="near-copy if the nearest-input distance, up to flips and right-angle rotations of "
                             "the inputs, < factor x the inputs' median nearest-neighbour distance (default 0.5)")
    parser.add_argument("--normalization", choices=["per_run", "per_image"],
                        help="one normalization for all inputs, or one per image (default per_run)")
    parser.add_argument("--stretch", choices=["asinh", "linear", "sqrt", "log"],
                        help="intensity stretch before the model (default asinh)")
    parser.add_argument("--resampling", choices=["auto", "sum", "mean"],
                        help="how blocks of input pixels become model pixels: auto decides by BUNIT (per-pixel "
                             "units such as counts, ADU, nanomaggies summed; surface brightness such as MJy/sr, "
                             "Jy/beam averaged; missing or unknown averaged), sum or mean forces one rule "
                             "(default auto)")
    _output_arguments(parser)
    if not demo:
        parser.add_argument("--tile", type=int,
                            help="cut every input into square tiles of this size first (default: inputs that fit "
                                 "the model within --max-block are used whole, larger frames are cut into tiles of "
                                 "the model's size at their own pixel scale)")
        parser.add_argument("--max-block", type=int,
                            help="largest block averaging per axis that brings an input or a tile to the model's "
                                 "size (default 2); raise it (e.g. 16) to reduce whole frames instead of tiling")
        parser.add_argument("--max-tiles", type=int,
                            help="most tiles kept over all tiled frames, shared evenly; more are thinned to a "
                                 "seeded subset stratified by source content (default 24)")
        parser.add_argument("--hdu", type=int, help="HDU index to read (default: first image HDU)")


PIPELINE_FLAGS = ("strategy", "noise", "calibrate", "reference_count", "novelty_factor", "normalization", "stretch",
                  "resampling")


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    """--quiet / --verbose of the commands that run flows (see ood_cli.terminal)."""
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="errors and the result only, no progress")
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="also Prefect's flow and task logs and other libraries' warnings")


def _verbosity(args: argparse.Namespace) -> Verbosity:
    return "quiet" if getattr(args, "quiet", False) else "verbose" if getattr(args, "verbose", False) else "normal"


def _parameters(args: argparse.Namespace, inputs: list[str], store: str) -> Any:
    from ood_core.pipeline.config import PipelineParameters

    fields: dict[str, Any] = {"inputs": inputs, "store": store}
    if getattr(args, "band_groups", None):
        fields["band_groups"] = [list(group) for group in args.band_groups]
    for name in ("model", "samples", "seed", "t0", "steps", "eta", "prior", "batch_size", "device", "dtype", "tile",
                 "max_block", "max_tiles", "hdu", "candidate_budget", "shards", "dask_address", *PIPELINE_FLAGS):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if args.auto_t0:
        fields["auto_t0"] = True
    if args.compile:
        fields["compile"] = True
    params = PipelineParameters(**fields)
    _check_model(params, args.resolution)
    return params


def _check_model(params: Any, resolution: int | None) -> None:
    """Refuse, before anything runs, a resolution or a number of channels the (local) model does not have."""
    from ood_core.errors import ConfigurationError
    from ood_core.pipeline.ingest import band_channel_map

    config_path = Path(params.model) / "unet" / "config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    size = config.get("sample_size")
    if resolution is not None and size is not None and int(size) != resolution:
        raise UsageError(f"--resolution {resolution}: the model {params.model} works at {size}x{size}; "
                         f"inputs are resized to the model's resolution")
    if config.get("in_channels") is not None:
        try:
            band_channel_map(params.band_count, int(config["in_channels"]), params.model)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from exc


def _prefect_api() -> Any:
    """The configured Prefect server, or a temporary one that dies with this process (even on SIGKILL)."""
    from ood_cli.prefect_server import prefect_api

    return prefect_api(timeout=float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))


def _run_flow(params: Any, verbosity: Verbosity = "normal", resume: str | None = None) -> dict[str, Any]:
    """Run the pipeline as the Prefect flow: the same flow, provenance and artifacts as a UI run."""
    from flows.pipeline import pipeline_flow

    with _prefect_api(), TerminalProgress(verbosity):
        # A run that cannot go on ends the flow Failed; called in Python, the flow raises its error instead.
        result = pipeline_flow(params, resume_run_id=resume)
    assert isinstance(result, dict)
    return result


def _summary(result: dict[str, Any]) -> None:
    _say(f"run        {result['run_id']}")
    _say(f"store      {result['store']}")
    _say(f"inputs     {result['n_inputs']} used, {len(result['quarantined'])} quarantined")
    for q in result["quarantined"]:
        _say(f"           quarantined {q.get('path')}: {q.get('reason')}")
    _frames_summary(result.get("summary") or {})
    for rule in (result.get("summary") or {}).get("resampling") or []:
        _say(f"resampling block {rule.get('rule')}: {rule.get('reason')}")
    _say(f"t0         {result['t0']}")
    _say(f"recon      median PSNR {result['median_psnr_db']:.2f} dB")
    _say(f"samples    {result['n_samples']} (acceptance rate {result['acceptance_rate']:.3f})")
    warning = ((result.get("summary") or {}).get("sampler") or {}).get("warning")
    if warning:
        _err(f"warning: {warning}")
    _realism_summary(result.get("summary") or {})
    _calibration_summary(result.get("summary") or {})
    timings = result.get("timings") or {}
    if timings:
        _say("timings    " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    for path in result.get("pictures", []) or []:
        _say(f"picture    {path}")


def _frames_summary(summary: dict[str, Any]) -> None:
    """What was done to each input frame (whole or tiles, kept and dropped), then warnings on mixed inputs."""
    from ood_core.evaluation.run_summary import frame_sentence

    frames = summary.get("frames") or []
    whole = {(tuple(f.get("shape") or []), f.get("reason")) for f in frames if f.get("geometry") != "tiles"}
    if len(frames) > 1 and len(whole) == 1 and all(f.get("geometry") != "tiles" for f in frames):
        (shape, reason), = whole  # the common case: every input used whole, alike; one line, not one per input
        _say(f"frame      {len(frames)} inputs ({'x'.join(map(str, shape))}): used whole, {reason}")
        frames = []
    for frame in frames:
        _say(f"frame      {frame_sentence(frame)}")
    for line in summary.get("input_warnings") or []:
        _err(f"warning: {line}")


def _realism_summary(summary: dict[str, Any]) -> None:
    """The run's samples against its shots (C2ST): one line, and a warning on stderr when told apart."""
    realism = summary.get("realism") or {}
    if not realism:
        return
    _say(f"realism    {realism.get('line')}")
    if realism.get("distinguishable"):
        _err(f"warning: the run's samples are distinguishable from real images (C2ST accuracy "
             f"{realism['accuracy']:.2f} against its shots): do not take them for real skies")


_PIXEL_COLUMNS = (("pixel_w1_rel", "spectrum_dex", "source_count_rel"), ("W1/sd", "P(k)dex", "count"))
_COUNTS_COLUMNS = (("counts_pmf_tv", "counts_profile_dex", "counts_source_rel"), ("pmf TV", "prof dx", "Li&Ma"))
"""The three score columns of the calibration table: pixel scores, or a counts domain's (its ranking names them)."""


def _calibration_summary(summary: dict[str, Any]) -> None:
    """The run's settings (given / calibration / default) and the calibration table with its verdict."""
    settings = summary.get("settings") or {}
    origin = settings.get("from") or {}
    if settings:
        _say("settings   " + ", ".join(f"{n} {settings.get(n)} ({origin.get(n)})"
                                       for n in ("t0", "strategy", "prior", "noise") if n in settings))
    calibration = summary.get("calibration") or {}
    if not calibration:
        return
    if not calibration.get("enabled"):
        _say(f"calibrate  off: {calibration.get('reason')}")
        return
    _say(f"calibrate  {len(calibration.get('table') or [])} settings on {len(calibration.get('held_out') or [])} "
         f"held-out shots, {calibration.get('evaluations_spent')} network evaluations (budget "
         f"{calibration.get('budget_evaluations')}), {calibration.get('steps')} DDIM steps")
    counts = "counts_pmf_tv" in str(calibration.get("ranking", ""))  # a photon-counts domain: its own scores
    (a, b, c), (la, lb, lc) = _COUNTS_COLUMNS if counts else _PIXEL_COLUMNS
    _say(f"           {'t0':>4} {'strategy':<16} {'slerp':<9} {'prior':<6} {'noise':<5} {la:>6} {lb:>7} "
         f"{lc:>6} {'C2ST':>5} {'copies':>6} {'accept':>6} {'ranks':>5}")
    for i, row in enumerate(calibration.get("table") or []):
        s = row["setting"]
        v = {k: float("nan") if x is None else x for k, x in row["scores"].items()}  # NaN is stored as None
        lam = "-" if s["strategy"] == "prior" else "-".join(f"{x:.2f}" for x in s["slerp_range"])
        mark = " <- chosen" if i == calibration.get("best") else ""
        _say(f"           {s['t0']:>4} {s['strategy']:<16} {lam:<9} {s['prior']:<6} {s.get('noise', 'off'):<5} "
             f"{v.get(a, float('nan')):>6.3f} {v.get(b, float('nan')):>7.3f} {v.get(c, float('nan')):>6.3f} "
             f"{v.get('c2st_accuracy', float('nan')):>5.2f} {v['near_copy_fraction']:>6.2f} "
             f"{v.get('acceptance', float('nan')):>6.3f} {float(row['rank_sum']):>5.1f}{mark}"
             + (f" ({row['disqualified']})" if row.get("disqualified") else ""))
    verdict = calibration.get("verdict") or {}
    _say(f"verdict    {verdict.get('line')}")
    if verdict.get("distinguishable"):
        _err("warning: the samples are distinguishable from real images (C2ST accuracy "
             f"{verdict['realism']['accuracy']:.2f} against the shots, the chosen setting's calibration samples): do "
             "not take them for real skies; see the verdict above")


def _open_hint(store: str, run_id: str) -> None:
    _say()
    _say("Open it in Python (xarray, dask-backed):")
    _say("    from ood_core.store import open_run")
    _say(f"    ds = open_run({store!r}, {run_id!r})")
    _say("    ds.samples_physical            # (sample, y, x) in the inputs' physical unit")
    _say('    ds.attrs["ood_run"]            # provenance')
    _say(f"List runs: ood runs {store}    Export FITS: ood export-fits {store} OUTDIR --run {run_id}")


def _execute_pipeline(params: Any, verbosity: Verbosity = "normal", resume: str | None = None) -> int:
    from ood_core.errors import MixedUnitsError, NoUsableInputError

    try:
        result = _run_flow(params, verbosity, resume)
    except (NoUsableInputError, MixedUnitsError) as exc:
        _err(str(exc))
        _err("nothing was written")
        return EXIT_USAGE
    except Exception as exc:  # the flow marked the run failed in the store
        _err(f"the run failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    _summary(result)
    if result["n_samples"] < params.samples:
        _err(f"warning: only {result['n_samples']} of {params.samples} requested samples passed the geometric "
             f"screening and the novelty rule within {params.candidate_budget} candidates (acceptance rate "
             f"{result['acceptance_rate']:.5f}); the run is complete with what passed. More inputs, another t0 or "
             f"a larger --candidate-budget may help; see the sampler's band in the run's provenance")
    _open_hint(result["store"], result["run_id"])
    return EXIT_OK


_RUN_OPTIONS = ("model", "samples", "seed", "t0", "steps", "eta", "prior", "candidate_budget", "resolution",
                "batch_size", "device", "dtype", "shards", "dask_address", "strategy", "noise", "reference_count",
                "novelty_factor", "normalization", "stretch", "resampling", "tile", "max_block", "max_tiles", "hdu")


def _resumable(store: str, run_id: str, dask_address: str | None = None) -> Any:
    """Take up a run (its lease claimed now, so a second resumer is refused at once) and return its recorded
    parameters; a UsageError saying why it cannot be resumed. ``dask_address``: a new scheduler for its shards."""
    from ood_core.pipeline import PipelineParameters, resume_run
    from ood_core.store import RunLeasedError, RunNotFoundError, StoreError
    from ood_core.store.lease import current_lease
    from ood_core.store.opening import open_root_readonly, run_group, run_record

    try:
        record = run_record(run_group(open_root_readonly(store, None), store, run_id))
        lease = current_lease(store, run_id)
        if record.get("status") == "writing" and lease is not None and lease.dead_reason() is None:
            raise RunLeasedError(store, lease, "it is not stale; `ood runs` shows it as writing")
        resume_run(store, run_id)
    except RunNotFoundError as exc:
        raise UsageError(f"no run {run_id} in {store} (see `ood runs {store}`)") from exc
    except StoreError as exc:  # RunLeasedError names the live writer; a refused run says why it stays failed
        raise UsageError(str(exc)) from exc
    parameters = {**record["parameters"], "store": store}
    if dask_address is not None:
        parameters["dask_address"] = dask_address
    return PipelineParameters(**parameters)


def cmd_run(args: argparse.Namespace) -> int:
    from ood_core.store import check_store_location

    groups = [list(group) for group in args.band_groups or []]
    if args.resume:
        if args.inputs or groups or args.auto_t0 or args.compile or any(
                getattr(args, name) is not None for name in _RUN_OPTIONS if name != "dask_address"):
            raise UsageError("--resume continues a run with the parameters it recorded: give only --store (and "
                             "--dask-address for a new scheduler)")
        params = _resumable(args.store, args.resume, args.dask_address)
        return _execute_pipeline(params, _verbosity(args), resume=args.resume)
    if bool(groups) == bool(args.inputs):
        raise UsageError("give either INPUT files (single-band images) or band groups (--bands FILE FILE ...), "
                         "not both and not neither (or --resume RUN_ID to continue a stale run)")
    params = _parameters(args, list(args.inputs) or [p for g in groups for p in g], args.store)
    check_store_location(params.store)  # a folder that is not a store is refused before any work
    return _execute_pipeline(params, _verbosity(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from ood_core.base_model.demo_skies import write_demo_skies

    out = Path(args.out).resolve()
    inputs = out / "inputs"
    store = out / "store.zarr"
    paths = write_demo_skies(inputs, n=args.images, seed=args.sky_seed)
    _say(f"demo: wrote {len(paths)} synthetic sky FITS files to {inputs}")
    if args.prior is None:
        # Measured on these skies with base64: the scalar prior's draws fail the geometric screening (0 of
        # 2048 candidates), the PPCA prior's pass (about 10-30 %). With mono64 (the skies are single-band) the
        # default demo's PPCA acceptance measured 0.727 (16 samples, seed 0; the scalar prior not re-measured).
        args.prior = DEMO_PRIOR
    params = _parameters(args, [str(inputs)], str(store))
    _say(f"demo: running the pipeline flow with the model {params.model} into {store}")
    started = time.perf_counter()
    code = _execute_pipeline(params, _verbosity(args))
    _say(f"demo: finished in {time.perf_counter() - started:.0f} s")
    return code


# --------------------------------------------------------------------------- store commands


def _since(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"--since {text!r}: give an ISO date or time, e.g. 2026-12-01 or 2026-12-01T08:00") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def cmd_runs(args: argparse.Namespace) -> int:
    from ood_core.store import list_run_page

    since = _since(args.since) if args.since else None
    limit = None if args.all else args.limit
    if limit is not None and limit < 0:
        raise UsageError(f"--limit {limit}: give a number of runs, or 0 (or --all) for every run")
    # the catalogue (no run group opened), only the entries of the page: as fast at the 10,000th run as at the 10th
    page = list_run_page(args.store, limit=limit, status=args.status, since=since, from_catalogue=not args.read_runs)
    runs = page.runs[::-1]  # oldest first, as ever: the newest runs at the bottom
    filtered = bool(args.status or since)
    if not runs:
        _say(f"{args.store}: no runs" + (" matching the filters" if filtered else ""))
        return EXIT_OK
    _say(f"{'run id':<32} {'status':<9} {'inputs':>6} {'samples':>7} {'acceptance':>10}")
    for r in runs:
        rate = "-" if r.acceptance_rate is None else f"{r.acceptance_rate:.3f}"
        counts = f"{'-':>6} {'-':>7}" if r.status == "broken" else f"{r.n_inputs:>6} {r.n_samples:>7}"
        _say(f"{r.run_id:<32} {r.shown_status:<9} {counts} {rate:>10}")
    # Reasons after the table, so one bad run never hides the others; non-zero exit only at the end.
    for r in runs:
        if r.stale:
            _say(f"  {r.run_id}: stale, {r.problem}; continue it: ood run --resume {r.run_id} --store {args.store}")
        elif r.status in ("failed", "broken"):
            # The first line of the recorded error (the whole of it is in the run's provenance).
            reason = (r.problem or "no reason recorded").strip().splitlines() or [""]
            _say(f"  {r.run_id}: {r.status}: {reason[0]}")
            if r.resumable:
                _say(f"    resumable (the infrastructure failed, not the inputs or settings): "
                     f"ood run --resume {r.run_id} --store {args.store}")
        if r.attempts > 1:
            _say(f"  {r.run_id}: written in {r.attempts} attempts (provenance 'attempts': who, when, how each ended)")
    if page.unread:
        what = "not read: more may match" if filtered else "not shown"
        _say(f"({page.unread} older run(s) {what}; --limit N or --all lists more)")
    broken = [r.run_id for r in runs if r.status == "broken"]
    if broken:
        _err(f"{len(broken)} run(s) with an unreadable record: {', '.join(broken)} (see `ood check {args.store}`)")
        return EXIT_FAILED
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from ood_core.store.migration import migrate_store

    report = migrate_store(args.store)
    _say(f"{args.store}: schema version {report.from_version} -> {report.to_version}; {report.runs} run(s), "
         f"{report.entries_written} catalogue entr{'y' if report.entries_written == 1 else 'ies'} written, "
         f"{report.runs_consolidated} run group(s) consolidated; root zarr.json {report.root_bytes_before} -> "
         f"{report.root_bytes_after} bytes")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from ood_core.store import audit_store

    checks = audit_store(args.store, content=not args.quick)
    if not checks:
        _say(f"{args.store}: no runs")
    for check in checks:
        verdict = "ok" if check.ok else "DAMAGED" if check.status != "broken" else "BROKEN"
        _say(f"{check.run_id:<32} {check.status:<9} {verdict}")
        for problem in check.problems:
            _say(f"    {problem}")
        for note in check.notes:
            _say(f"    ({note})")
        if check.status == "stale":
            _say(f"    continue it: ood run --resume {check.run_id} --store {args.store}")
    bad = [c for c in checks if not c.ok]
    what = "metadata and shapes" if args.quick else "metadata, shapes and chunk checksums"
    _say(f"{len(checks)} run(s) checked ({what}): {len(checks) - len(bad)} intact, {len(bad)} damaged or broken")
    return EXIT_FAILED if bad else EXIT_OK


def cmd_export_fits(args: argparse.Namespace) -> int:
    from ood_core.store import ExportExistsError, export_run_fits

    try:
        paths = export_run_fits(args.store, args.outdir, args.run, overwrite=args.overwrite)
    except ExportExistsError as exc:
        raise UsageError(f"{args.outdir} already holds {len(exc.existing)} of these FITS files (e.g. "
                         f"{exc.existing[0].name}); pass --overwrite to replace them, or choose another folder; "
                         f"nothing was written") from exc
    _say(f"wrote {len(paths)} FITS files to {args.outdir}")
    return EXIT_OK


def cmd_export_netcdf(args: argparse.Namespace) -> int:
    from ood_core.store.netcdf import export_run_netcdf

    if Path(args.path).exists() and not args.overwrite:
        raise UsageError(f"{args.path} exists; pass --overwrite to replace it")
    path = export_run_netcdf(args.store, args.path, args.run, overwrite=args.overwrite)
    _say(f"wrote {path} (netCDF-4; provenance in the attribute ood_run as JSON: "
         f"ood_core.store.netcdf.run_provenance(xarray.open_dataset(path)))")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import EvaluateParameters, evaluate_flow

    fields: dict[str, Any] = {"store": args.store, "reference": list(args.reference), "out_dir": args.out}
    if args.run:
        fields["run_id"] = args.run
    if args.baselines is not None:
        fields["baselines"] = args.baselines
    if args.finetune_steps is not None:
        fields["finetune_steps"] = args.finetune_steps
    for name, field in (("device", "device"), ("samples", "n_baseline_samples"), ("sample_steps", "sample_steps"),
                        ("seed", "seed")):
        if getattr(args, name) is not None:
            fields[field] = getattr(args, name)
    with _prefect_api(), TerminalProgress(_verbosity(args)):
        result = evaluate_flow(EvaluateParameters(**fields))
    _say(json.dumps(result.get("table", result), indent=2, default=str))
    _say(f"metrics and plots in {args.out}")
    return EXIT_OK


def cmd_train_base(args: argparse.Namespace) -> int:
    from flows.train_base import TrainBaseParameters, train_base_flow

    fields: dict[str, Any] = {"checkpoint_dir": args.checkpoints, "out_dir": args.out}
    for name in ("max_steps", "total_steps", "card_cutouts", "device", "dtype", "sampler", "batch_size", "channels",
                 "data", "init_from", "train_only", "continue_from", "learning_rate", "warmup_steps",
                 "block_out_channels", "attention_levels", "natural_share", "max_seconds"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    with _prefect_api(), TerminalProgress(_verbosity(args)):
        result = train_base_flow(TrainBaseParameters(**fields))
    _say(json.dumps(result, indent=2, default=str))
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _add_train_base(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train-base", help="train (or resume training of) the embedded base model")
    train.add_argument("--checkpoints", default="checkpoints/base64", help="checkpoint folder (resumed if present)")
    train.add_argument("--out", default="models/base64", help="exported model folder")
    train.add_argument("--max-steps", type=int, help="train at most this many more steps in this call")
    train.add_argument("--total-steps", type=int, help="total training steps of the schedule")
    train.add_argument("--card-cutouts", help="FITS cutout folder for the model card's reconstruction table "
                                              "(e.g. ../shared/data/fits/cutouts_128); none: no card")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"],
                       help="where to train (default auto: CUDA when available); checkpoints resume on any device")
    train.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                       help="autocast precision of the UNet (default auto: bfloat16 on CUDA, float32 on the CPU)")
    train.add_argument("--sampler", choices=["auto", "loop", "batched"],
                       help="patch sampler (default auto: batched on the GPU, per-image loop on the CPU)")
    train.add_argument("--batch-size", type=int, help="patches per step (default 16)")
    train.add_argument("--channels", type=int, choices=[1, 3],
                       help="image channels of the model (default 3; 1 for a single-band model)")
    train.add_argument("--data", nargs="+", choices=["sky-sim", "photos", "wheel-photos", "dead-leaves"],
                       help="training data: sky-sim (simulated skies, a new scene per patch) and image sets "
                            "(default: photos, the 13 photographs of base64)")
    train.add_argument("--natural-share", type=float,
                       help="with sky-sim and image sets: the share of each batch cut from the images (default 0.1)")
    train.add_argument("--block-out-channels", type=int, nargs="+", metavar="WIDTH",
                       help="UNet widths per level (default 32 64 128 128 as base64; models/sky64: 16 32 64 128)")
    train.add_argument("--attention-levels", type=int, nargs="*", metavar="LEVEL",
                       help="levels with self-attention (default 2 as base64; models/sky64: 3)")
    train.add_argument("--max-seconds", type=float,
                       help="stop after this much wall time in this call, checkpointed (resume later)")
    train.add_argument("--init-from", help="model folder whose weights start the training (same architecture), "
                                           "e.g. models/mono64")
    train.add_argument("--train-only", nargs="+", metavar="PREFIX",
                       help="train only the UNet parameters whose names start with these (e.g. conv_in conv_out "
                            "conv_norm_out), the others frozen; default: all")
    train.add_argument("--continue-from", help="exported model folder to continue when --checkpoints is empty "
                                               "(weights, EMA and step count carry over; the optimizer restarts), "
                                               "e.g. models/grey64")
    train.add_argument("--learning-rate", type=float, help="AdamW learning rate (default 3e-4)")
    train.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 200)")
    _output_arguments(train)
    train.set_defaults(func=cmd_train_base)


def _runs_parser(sub: Any) -> None:
    """The `ood runs` subcommand and its options."""
    runs = sub.add_parser("runs", help="one line per run: id, status, inputs, samples, acceptance rate")
    runs.add_argument("store")
    runs.add_argument("--status", choices=["writing", "stale", "complete", "failed", "broken"],
                      help="only runs of this status")
    runs.add_argument("--since", help="only runs started at or after this ISO date/time (UTC unless given)")
    runs.add_argument("--limit", type=int, default=50, metavar="N",
                      help="the newest N runs (default 50; 0: all), shown oldest first; says how many are not shown")
    runs.add_argument("--all", action="store_true", help="every run (same as --limit 0)")
    runs.add_argument("--read-runs", action="store_true",
                      help="read every run group instead of the run catalogue (slower; finds unreadable records)")
    runs.set_defaults(func=cmd_runs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ood",
        description="Few-shot out-of-domain synthesis of FITS images with a frozen diffusion model.",
        epilog="Exit codes: 0 done; 1 the run failed; 2 bad usage or no usable input (nothing written).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="end to end on made FITS skies with the shipped model")
    demo.add_argument("--out", default="out/demo", help="folder for the demo inputs and store (default out/demo)")
    demo.add_argument("--images", type=int, default=DEMO_IMAGES, help=f"synthetic skies to make ({DEMO_IMAGES})")
    demo.add_argument("--sky-seed", type=int, default=0, help="seed of the synthetic skies (default 0)")
    _pipeline_arguments(demo, demo=True)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="the pipeline on your FITS files (files, directories or globs)")
    run.add_argument("inputs", nargs="*", metavar="INPUT",
                     help="FITS files, directories (their FITS files) or quoted glob patterns ('data/*.fits'); "
                          "stored in this order; unusable files are set aside with their reason")
    run.add_argument("--bands", action="append", nargs="+", metavar="FILE", dest="band_groups",
                     help="one band group: the FITS files of one field, one per band, in channel order (e.g. "
                          "--bands g.fits r.fits i.fits); repeat for more fields (at least 3 groups, or --tile); "
                          "bands on other WCS grids are reprojected onto the first band's")
    run.add_argument("--store", required=True, help="zarr store URL (local path or fsspec URL)")
    run.add_argument("--resume", metavar="RUN_ID",
                     help="continue a stale or resumably failed run (`ood runs` says which) as recorded")
    _pipeline_arguments(run, demo=False)
    run.set_defaults(func=cmd_run)

    _runs_parser(sub)

    migrate = sub.add_parser("migrate", help="bring a store of an earlier schema version to this one, losing nothing")
    migrate.add_argument("store")
    migrate.set_defaults(func=cmd_migrate)

    check = sub.add_parser("check", help="verify every run of a store against its checksums (exit 1 if damaged)")
    check.add_argument("store")
    check.add_argument("--quick", action="store_true", help="metadata and shapes only, no chunk is read")
    check.set_defaults(func=cmd_check)

    export = sub.add_parser("export-fits", help="a run's samples as FITS files with provenance headers")
    export.add_argument("store")
    export.add_argument("outdir")
    export.add_argument("--run", help="run id (default: the latest complete run)")
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    export.set_defaults(func=cmd_export_fits)

    netcdf = sub.add_parser("export-netcdf", help="a run as one netCDF-4 file (xarray.open_dataset reads it)")
    netcdf.add_argument("store")
    netcdf.add_argument("path", help="the .nc file to write")
    netcdf.add_argument("--run", help="run id (default: the latest complete run)")
    netcdf.add_argument("--overwrite", action="store_true", help="replace an existing file")
    netcdf.set_defaults(func=cmd_export_netcdf)

    evaluate = sub.add_parser("evaluate", help="metrics and plots of a run vs real reference images")
    evaluate.add_argument("store")
    evaluate.add_argument("--reference", nargs="+", required=True, metavar="INPUT",
                          help="real images of the domain that were not among the inputs")
    evaluate.add_argument("--run", help="run id (default: the latest complete run)")
    evaluate.add_argument("--out", default="out/evaluate", help="folder for evaluation.json and the PNG plots")
    evaluate.add_argument("--baselines", nargs="*", help="baselines to run beside the method")
    evaluate.add_argument("--finetune-steps", type=int, help="steps of the fine-tuning baseline")
    evaluate.add_argument("--samples", type=int, help="samples per baseline (default: as many as the run has)")
    evaluate.add_argument("--sample-steps", type=int, help="DDIM steps of the baselines (default: the run's)")
    evaluate.add_argument("--seed", type=int, help="seed of every baseline (default 0)")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"])
    _output_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    _add_train_base(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_output(_verbosity(args))  # before Prefect and diffusers are imported
    try:
        code: int = args.func(args)
    except (ValidationError, UsageError) as exc:
        _err(f"bad parameters: {exc}")
        return EXIT_USAGE
    except FileNotFoundError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except Exception as exc:
        from ood_core.errors import ConfigurationError
        from ood_core.store import StoreError, StoreIntegrityError

        if isinstance(exc, StoreIntegrityError):  # the data are damaged: a failure, not bad usage
            _err(str(exc))
            _err(f"nothing was written; `ood check {exc.store_url}` lists every damaged run")
            return EXIT_FAILED
        # no such store or run, or a call the library refuses before any work (e.g. `ood evaluate` of a
        # band-group run): bad usage, with the reason and no traceback
        if isinstance(exc, (StoreError, ConfigurationError)):
            _err(str(exc))
            return EXIT_USAGE
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
