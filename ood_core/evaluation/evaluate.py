"""Evaluation of a run against real reference images and baselines (DESIGN section 7); ``ood evaluate``.

``evaluate_run`` goes through four steps, one module each:

1. loading (``loading``): the complete run from its store, and the reference FITS files through ``ood_core.io``
   and the run's own normalization (so the reference is clipped and mapped exactly as the samples were);
2. baselines (``baselines.REGISTRY``): each named baseline's images through the run's frozen model
   (checked by its weights' sha256), mapped to physical units with the run's normalization;
3. scoring (``scoring``): every metric of ``ood_core.evaluation.metrics`` for each set against the reference;
4. report (``evaluation_report``): PNG figures and ``evaluation.json`` (strict JSON).

Rows of the table: ``method`` (the run's samples), each baseline, and ``inputs`` (the real few-shot inputs
themselves: the floor a metric reaches with real images of the domain, given the small sets).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ood_core.errors import ConfigurationError
from ood_core.evaluation import baselines as bl
from ood_core.evaluation.evaluation_report import write_json, write_plots
from ood_core.evaluation.loading import ImageSet, ReferenceSet, RunData, load_reference, load_run
from ood_core.evaluation.metrics import METRIC_DOCS, MINKOWSKI_QUANTILES
from ood_core.evaluation.scoring import Scores, score_sets, table_rows
from ood_core.method.model import FrozenDiffusionModel, load_model
from ood_core.method.seeds import child_seed
from ood_core.store.provenance import utc_now_iso

log = logging.getLogger(__name__)

DEFAULT_BASELINES: tuple[bl.BaselineName, ...] = ("in_domain", "prior_unscreened", "augmentation", "finetune")
ANCHOR_STREAM = "evaluation-anchor"
"""The domain classifier's in-domain anchor draws its noise from ``child_seed(seed, ANCHOR_STREAM)``: a named
stream of its own, apart from the ``in_domain`` baseline's (``seed``)."""

Progress = Callable[[str], None]


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - started, 3)


def _check_model(model: FrozenDiffusionModel, provenance: dict[str, Any]) -> None:
    expected = provenance.get("model", {}).get("weights_sha256")
    if expected and model.weights_sha256 != expected:
        raise ConfigurationError(
            f"the model given ({model.weights_sha256[:12]}...) is not the run's frozen model ({str(expected)[:12]}...);"
            " baselines must use the same model: pass model=None to load the run's own"
        )


def _all_sets(
    run: RunData, ctx: bl.BaselineContext, names: Sequence[str], n: int, say: Progress, timings: dict[str, float]
) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    """The method's samples, each baseline's images (through ``baselines.REGISTRY``) and the inputs."""
    sets = {"method": ImageSet("method", run.samples, run.samples_physical, {"source": f"run {run.run_id} samples"})}
    infos: dict[str, Any] = {}
    for name in names:
        say(f"baseline {name}: {n} images")
        with _timed(timings, name):
            draw = bl.draw_baseline(name, ctx, n)
            physical = run.physical_of(draw.images, draw.parents)
        infos[name] = {**draw.info, "seconds": timings[name]}
        sets[name] = ImageSet(name, draw.images, physical, infos[name])
    sets["inputs"] = ImageSet("inputs", run.inputs, run.physical_of(run.inputs, np.arange(run.inputs.shape[0])),
                              {"source": "the run's few-shot inputs (real images; floor of each metric)"})
    return sets, infos


def _result(
    run: RunData, model: FrozenDiffusionModel, reference: ReferenceSet, scores: Scores, settings: dict[str, Any],
    baseline_info: dict[str, Any], plot_paths: dict[str, Path], timings: dict[str, float],
) -> dict[str, Any]:
    """The evaluation as one JSON-ready dict (the content of evaluation.json), less its first key, the store."""
    return {
        "run_id": run.run_id,
        "evaluated": utc_now_iso(),
        "units": run.units,
        "model": {"source": model.source, "weights_sha256": model.weights_sha256},
        "reference": {"n": reference.images.model.shape[0], "sources": reference.sources,
                      "excluded": reference.excluded, "quarantined": reference.quarantined,
                      "statistics": scores.reference},
        "settings": {**settings, "novelty_factor": run.novelty_factor,
                     "minkowski_thresholds": scores.thresholds.tolist(),
                     "minkowski_quantiles": list(MINKOWSKI_QUANTILES)},
        "metric_docs": dict(METRIC_DOCS),
        "novelty": scores.novelty,
        "table": table_rows(scores.per_set),
        "sets": scores.per_set,
        "baselines": baseline_info,
        "plots": {k: str(v) for k, v in plot_paths.items()},
        "timings": timings,
    }


def evaluate_run(
    store_url: str,
    reference_inputs: Sequence[str],
    run_id: str | None = None,
    *,
    out_dir: str | Path = "out/evaluate",
    baselines: Sequence[str] = DEFAULT_BASELINES,
    n_baseline_samples: int | None = None,
    finetune_steps: int = 200,
    finetune_batch_size: int = 8,
    finetune_learning_rate: float = 1e-4,
    sample_steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 16,
    in_domain_anchor_count: int | None = None,
    model: FrozenDiffusionModel | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of a run's samples and of each baseline against real reference images; JSON and PNGs.

    Returns a JSON-safe dict: ``table`` (one row per set, the headline metrics), ``sets`` (every number per
    set), ``metric_docs``, ``reference``, ``baselines`` (how each was made), ``plots`` and ``json`` (paths).
    ``sample_steps`` (K of the baselines that sample from N(0, I)) defaults to the run's own K. The domain
    separation classifier is trained on ``in_domain_anchor_count`` (default max(n, 16)) in-domain samples of
    their own seed, disjoint from the ``in_domain`` baseline's, against the reference images.
    """
    say = progress or (lambda message: log.info("%s", message))
    names = bl.check_baselines(list(baselines))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    run = load_run(store_url, run_id)
    if model is None:
        model = load_model(run.provenance["model"]["source"], device=device)
    _check_model(model, run.provenance)
    with _timed(timings, "reference"):
        reference = load_reference(reference_inputs, run.provenance, model.resolution, model.channels)
    say(f"reference: {reference.images.model.shape[0]} images ({len(reference.excluded)} excluded as inputs)")
    n = int(n_baseline_samples or run.samples.shape[0])
    ctx = bl.BaselineContext(
        model, run.inputs, run.input_latents, run.grid, int(sample_steps or run.steps), eta=run.eta,
        prior_kind=str((run.provenance.get("prior") or {}).get("kind") or run.parameters.get("prior") or "scalar"),
        seed=seed, batch_size=batch_size,
        finetune_steps=finetune_steps, finetune_batch_size=finetune_batch_size,
        finetune_learning_rate=finetune_learning_rate)
    with _timed(timings, "in_domain_anchor"):
        anchor = bl.in_domain_samples(model, int(in_domain_anchor_count or max(n, 16)), ctx.steps,
                                      seed=child_seed(seed, ANCHOR_STREAM), batch_size=batch_size)
    sets, baseline_info = _all_sets(run, ctx, names, n, say, timings)
    say("metrics")
    with _timed(timings, "metrics"):
        scores = score_sets(sets, reference.images, run.inputs, anchor, run.novelty_factor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _timed(timings, "plots"):
        plot_paths = write_plots(out, sets, reference.images, scores, units=run.units)
    timings["total"] = round(time.perf_counter() - started, 3)
    settings = {"baselines": names, "n_baseline_samples": n, "sample_steps": ctx.steps, "seed": seed,
                "finetune_steps": finetune_steps, "finetune_batch_size": finetune_batch_size,
                "finetune_learning_rate": finetune_learning_rate}
    result = {"store": store_url,
              **_result(run, model, reference, scores, settings, baseline_info, plot_paths, timings)}
    result["settings"]["in_domain_anchor_count"] = int(anchor.shape[0])
    loaded = write_json(result, out / "evaluation.json")
    say(f"wrote {loaded['json']}")
    return loaded
