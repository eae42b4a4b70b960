"""The sample stage's work, cut so that any number of processes can share it and still make the same samples.

**Slots.** A run asks for ``samples`` samples: slot j is filled by the first candidate of its own stream
(:func:`ood_core.method.sampler.slot_candidate_seed`: seed, j, attempt 0, 1, ...) that passes the geometric
screening and, once denoised, is not a near-copy of an input. A slot tries at most ``ceil(candidate_budget /
samples)`` candidates and keeps trying after at most ``ACCEPTED_PER_SAMPLE`` near-copies; a slot that runs out stays
empty, and the run has fewer samples (and says so in its provenance).

**Blocks.** Slots are handled ``batch`` at a time: each round screens the pending slots' next candidates together
and denoises the accepted ones in one batch. What a block makes depends on the block alone, never on the process
that runs it or on what that process ran before, so the samples are the same bit for bit whether one process runs
every block or N shards split them.

**Shards.** A shard is a range of consecutive blocks (a range of seeds) and writes its own region of the run's
pre-sized sample arrays (:mod:`ood_core.store.regions`); the regions are moved together once every shard is done.
One shard is the whole run and writes through the run's own writer. A block's samples are committed with a
checkpoint (next block, counters), so an interrupted shard resumes at its first unfinished block.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from ood_core.method import ddim
from ood_core.method.counts_domain import poisson_draws
from ood_core.method.model import FrozenDiffusionModel
from ood_core.method.noise import NoiseModel, add_noise_to_stack, fit_noise_model
from ood_core.method.normalization import NormalizationParams, bands_to_channels, model_to_physical, normalize
from ood_core.method.novelty import NoveltyRule
from ood_core.method.prior import LatentPrior, PriorKind, fit_prior, flatten_latents
from ood_core.method.sampler import GeometricSampler, SamplerConfig, slot_candidate_seed
from ood_core.method.seeds import child_seed
from ood_core.pipeline.config import (
    DEFAULT_PRIOR,
    DEFAULT_STRATEGY,
    PipelineParameters,
    settled,
    slerp_range_of,
)
from ood_core.pipeline.pipelined import run_pipelined, run_serial
from ood_core.store.regions import RegionWriter, assign_regions, merge_regions
from ood_core.store.writer import RunWriter

log = logging.getLogger(__name__)

ACCEPTED_PER_SAMPLE = 4
"""Accepted candidates a slot denoises at most (near-copies are found only after denoising and dropped): after
that many near-copies the slot stays empty."""

FIRST_LOOK = 4
"""Candidates of a slot screened in its first look for an acceptable one (then 8, 16, ...)."""

SCREENING_THREADS = 2
"""Threads that screen the first look of the coming blocks in a pipelined sample stage, each block in turn: the
candidate draws (one generator each, about 4 per denoised sample) are the largest host cost; with two, the screening
keeps up with the network thread (bench/bench_sample_stage.py)."""

ProgressHook = Callable[[str, int, int], None]
"""progress(stage, done, total): called during long stages; stage is one of bandwidth_scan, invert (per network
evaluation), reference (in-domain latents, per network evaluation), prior_fit (fit and diagnostics), sample
(committed samples, at the start and after each batch)."""


class RunSource(Protocol):
    """What the sample stage reads from a run: its provenance and its per-input / reference arrays."""

    @property
    def provenance(self) -> dict[str, Any]: ...

    def read(self, name: str) -> npt.NDArray[Any]: ...


Append = Callable[[dict[str, Any], dict[str, Any]], int]
"""append(batch, checkpoint) -> rows appended so far: where a block's samples go (the run's writer for one
shard, a RegionWriter for one of several)."""


def appender_of(writer: RunWriter | RegionWriter) -> Append:
    """The :data:`Append` of a writer: fresh arrays handed over uncopied, each batch with its checkpoint."""

    def append(batch: dict[str, Any], checkpoint: dict[str, Any]) -> int:
        return writer.append_samples(copy=False, checkpoint=checkpoint, **batch)

    return append


def prior_from(source: RunSource, kind: PriorKind) -> tuple[LatentPrior, torch.Tensor, torch.Tensor]:
    """The OOD prior refitted from the stored latents (deterministic, milliseconds), with the flattened OOD and
    reference latents."""
    ood_flat = flatten_latents(torch.from_numpy(source.read("input_latents")))
    return fit_prior(ood_flat, kind), ood_flat, flatten_latents(torch.from_numpy(source.read("reference_latents")))


def match_recorded_threads(source: RunSource, model: FrozenDiffusionModel) -> None:
    """On the CPU, compute with as many torch threads as the run's invert stage did: float sums (convolutions)
    depend on the thread count, and a shard in a one-thread Dask worker must compute what one process would."""
    record = source.provenance.get("compute")
    threads = record.get("torch_threads") if isinstance(record, dict) else None
    if model.device.type == "cpu" and isinstance(threads, int) and threads != torch.get_num_threads():
        log.info("using %d torch threads, as the run's earlier stages did", threads)
        torch.set_num_threads(threads)


def recorded_batch_size(source: RunSource) -> int:
    """The batch size the run chose at its invert stage (provenance ``compute``)."""
    record = source.provenance.get("compute")
    if not isinstance(record, dict) or not isinstance(record.get("batch_size"), int):
        raise ValueError("the run has no recorded batch size (provenance 'compute'): run its invert stage first")
    return int(record["batch_size"])


# --------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SlotPlan:
    """``samples`` slots in blocks of ``block``; each slot tries at most ``tries`` candidates."""

    samples: int
    block: int
    tries: int

    @classmethod
    def of(cls, params: PipelineParameters, block: int) -> SlotPlan:
        return cls(params.samples, block, max(1, math.ceil(params.candidate_budget / params.samples)))

    @property
    def blocks(self) -> int:
        return math.ceil(self.samples / self.block)

    def slots(self, block: int) -> range:
        return range(block * self.block, min((block + 1) * self.block, self.samples))

    def shard_blocks(self, shards: int) -> list[range]:
        """Consecutive blocks per shard, as even as possible (fewer shards than asked when blocks are few)."""
        count = max(1, min(shards, self.blocks))
        edges = [i * self.blocks // count for i in range(count + 1)]
        return [range(edges[i], edges[i + 1]) for i in range(count)]

    def regions(self, shards: int) -> list[tuple[int, int]]:
        """[first slot, end slot) of each shard: where its samples go in the run's arrays."""
        return [(blocks.start * self.block, min(blocks.stop * self.block, self.samples))
                for blocks in self.shard_blocks(shards)]


# --------------------------------------------------------------------------------------------- one block


class SampleContext:
    """Everything a block needs, read once from the run: inputs, grid, normalization, novelty rule, sampler."""

    def __init__(self, params: PipelineParameters, source: RunSource, model: FrozenDiffusionModel) -> None:
        record = source.provenance
        self.images = torch.from_numpy(source.read("inputs"))
        inversion = record["inversion"]
        self.grid = [int(t) for t in inversion["grid"]]
        self.t0, self.steps = int(inversion["t0"]), int(inversion["steps"])
        self.norm_params = [NormalizationParams.from_dict(p) for p in record["normalization"]["params"]]
        self.per_band = bool(record["normalization"].get("per_band", False))
        self.rule = NoveltyRule(factor=params.novelty_factor)
        self.novelty = self.rule.prepared(self.images)
        self.eta, self.seed = params.eta, params.seed
        self.plan = SlotPlan.of(params, recorded_batch_size(source))
        model.reserve_batch(self.plan.block)
        params = settled(params, source.provenance)
        prior, ood_flat, reference_flat = prior_from(source, params.prior or DEFAULT_PRIOR)
        config = SamplerConfig(strategy=params.strategy or DEFAULT_STRATEGY, candidate_budget=params.candidate_budget,
                               slerp_range=slerp_range_of(source.provenance))
        self.sampler = GeometricSampler(prior, ood_flat, reference_flat, config, seed=params.seed,
                                        device=model.device)
        self.noise_on = params.noise == "on"
        self.counts = bool((record["normalization"].get("counts_domain") or {}).get("counts", False))
        """Photon counts: noise on is the Poisson draw of the denoised sample as an expectation (no Gaussian)."""
        self.noise_model: NoiseModel | None = None if self.per_band or self.counts else fit_noise_model(
            model_to_physical(self.images.numpy(), self.norm_params, np.arange(self.images.shape[0])))

    def physical(self, samples: npt.NDArray[Any], parents: npt.NDArray[np.int64],
                 nearest: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Samples in physical units: the run's normalization, or (per-image mode) the parent's / nearest input's;
        band groups: (N, B, H, W), band k through its own normalization."""
        if self.per_band:
            return model_to_physical(samples, self.norm_params, per_band=True)
        return model_to_physical(samples, self.norm_params, self.owners(parents, nearest))

    def owners(self, parents: npt.NDArray[np.int64], nearest: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Whose normalization a sample goes back through: the parent input's, else the nearest's."""
        return parents if len(self.norm_params) == 1 else np.where(parents >= 0, parents, nearest)

    def with_noise(self, samples: npt.NDArray[Any], parents: npt.NDArray[np.int64], nearest: npt.NDArray[np.int64],
                   slots: list[int]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """(model-space samples, physical samples) with matching noise added in physical units (noise on): the
        physical samples are the denoised ones plus the noise, not clipped (a sample's background often sits at the
        normalization's lower bound, where clipping would take half the noise away); the model-space samples are
        those re-normalized with the same parameters, where values outside the interval clip. Slot j's noise comes
        from ``child_seed(seed, "noise/j")``: the same in any shard."""
        physical = self.physical(samples, parents, nearest)
        if not self.noise_on or (self.noise_model is None and not self.counts) or not len(samples):
            return samples, physical
        owners = self.owners(parents, nearest)
        per_input = len(self.norm_params) > 1
        seeds = [child_seed(self.seed, f"noise/{slot}") for slot in slots]
        targets = [int(o) for o in owners] if per_input else None
        if self.counts:
            noisy = poisson_draws(physical, seeds)
        else:
            assert self.noise_model is not None
            noisy, _ = add_noise_to_stack(physical, self.noise_model, seeds, targets)
        band = np.stack([normalize(image, self.norm_params[int(owners[i]) if per_input else 0])
                         for i, image in enumerate(noisy)])
        return bands_to_channels(band, samples.shape[1]).astype(np.float32), noisy.astype(np.float32)

    def noise_record(self, origin: str) -> dict[str, Any]:
        """Provenance ``noise``: on or off, where that came from, the fitted model, the seed stream."""
        if self.counts:
            return {"enabled": self.noise_on, "from": origin, "kind": "poisson",
                    "seed_stream": "child_seed(run seed, 'noise/<sample slot>')",
                    "applied_to": "samples_physical: a Poisson draw (whole counts) of the denoised sample in counts, "
                                  "taken as the expectation (negative values as none); samples: the draw re-normalized"
                                  if self.noise_on else "nothing: samples_physical is the expectation (not counts)"}
        if self.noise_model is None:
            return {"enabled": False, "from": origin, "reason": "band groups: noise matching is single-band"}
        return {"enabled": self.noise_on, "from": origin, **self.noise_model.to_record(),
                "seed_stream": "child_seed(run seed, 'noise/<sample slot>')",
                "applied_to": "samples_physical (denoised sample + noise, not clipped), and samples: those "
                              "re-normalized with the run's parameters, so model_to_physical(samples) differs from "
                              "samples_physical where the noisy value falls outside the normalization interval "
                              "(clipped); the novelty rule judged the samples before the noise"
                              if self.noise_on else "nothing"}


@dataclass
class Counters:
    """Candidates tried (screened up to each slot's choice), accepted, denoised, near-copies, empty slots."""

    tried: int = 0
    accepted: int = 0
    near_copies: int = 0
    """Denoised samples the novelty rule dropped as near-copies of an input."""
    failed_slots: int = 0
    """Slots left empty."""
    budget_exhausted: int = 0
    """Empty slots that used up their tries."""

    def add(self, other: Counters) -> None:
        for name in _COUNTER_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in _COUNTER_NAMES}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Counters:
        values = values or {}
        return cls(**{name: int(values.get(name, 0)) for name in _COUNTER_NAMES})


_COUNTER_NAMES = tuple(f.name for f in fields(Counters))


@dataclass
class _Choice:
    """A slot's next accepted candidate: its attempt number, seed, latent, criteria and parent."""

    attempt: int
    seed: int
    latent: torch.Tensor
    criteria: torch.Tensor
    parent: int


@dataclass
class _Block:
    """A block in progress: next attempt per slot, near-copies per slot, filled rows, counters."""

    slots: list[int]
    attempts: dict[int, int] = field(default_factory=dict)
    near: dict[int, int] = field(default_factory=dict)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)


def _next_choices(ctx: SampleContext, block: _Block, pending: list[int]) -> dict[int, _Choice]:
    """Each pending slot's next accepted candidate, screening 4, 8, 16 ... of its candidates at a time (all pending
    slots together); a slot whose tries run out gets none."""
    chosen: dict[int, _Choice] = {}
    searching, look = list(pending), FIRST_LOOK
    while searching:
        spans: dict[int, tuple[int, int]] = {}  # slot -> its [first, end) positions in this look's candidates
        seeds: list[int] = []
        for slot in searching:
            first = block.attempts.get(slot, 0)
            spans[slot] = (len(seeds), len(seeds) + max(0, min(look, ctx.plan.tries - first)))
            seeds.extend(slot_candidate_seed(ctx.seed, slot, first + k) for k in range(spans[slot][1] - spans[slot][0]))
        screened = ctx.sampler.screen(seeds)
        accepted = screened.accepted.cpu().numpy()
        still, hit_slots, hits = [], [], []
        for slot in searching:
            begin, end = spans[slot]
            found = np.flatnonzero(accepted[begin:end])
            first = block.attempts.get(slot, 0)
            if found.size == 0:
                block.attempts[slot] = first + end - begin
                block.counters.tried += end - begin
                if block.attempts[slot] < ctx.plan.tries:
                    still.append(slot)
                continue
            block.attempts[slot] = first + int(found[0]) + 1
            block.counters.tried += int(found[0]) + 1
            block.counters.accepted += 1
            hit_slots.append(slot)
            hits.append(begin + int(found[0]))
        if hits:  # the chosen candidates taken out together (one gather each, not one indexing per slot)
            where = torch.tensor(hits, dtype=torch.long)
            latents = screened.latents[where.to(screened.latents.device)].unbind(0)
            criteria = screened.criteria[where.to(screened.criteria.device)].unbind(0)
            parents = screened.parents[where].tolist()
            for i, (slot, hit) in enumerate(zip(hit_slots, hits, strict=True)):
                chosen[slot] = _Choice(block.attempts[slot] - 1, seeds[hit], latents[i], criteria[i], parents[i])
        searching, look = still, 2 * look
    return chosen


def _denoise(model: FrozenDiffusionModel, ctx: SampleContext, block: _Block, chosen: dict[int, _Choice]) -> None:
    """Denoise the chosen candidates (slot order, one batch), keep those that are not near-copies as rows."""
    slots = sorted(chosen)
    latents = torch.stack([chosen[s].latent for s in slots]).reshape(-1, *ctx.images.shape[1:]).float()
    seeds = [chosen[s].seed for s in slots]
    samples = _to_host(ddim.ddim_generate(model, latents, ctx.grid, eta=ctx.eta, seeds=seeds,
                                          batch_size=ctx.plan.block, output="device"))
    novelty = ctx.novelty.evaluate(samples)
    latents_host = _to_host(latents).numpy()
    criteria = _to_host(torch.stack([chosen[s].criteria for s in slots])).numpy()
    samples_host = samples.numpy()
    near_copy, distance, nearest = (novelty.is_near_copy.tolist(), novelty.distance.tolist(),
                                    novelty.index.tolist())
    for i, slot in enumerate(slots):
        if near_copy[i]:
            block.counters.near_copies += 1
            block.near[slot] = block.near.get(slot, 0) + 1
            continue
        block.rows[slot] = {
            "samples": samples_host[i], "sample_latents": latents_host[i], "sample_seed": seeds[i],
            "sample_parent": chosen[slot].parent, "sample_criteria": criteria[i],
            "sample_nearest_input_distance": distance[i], "nearest": nearest[i], "slot": slot,
        }


def _to_host(values: torch.Tensor) -> torch.Tensor:
    """``values`` on the host: on CUDA through a pinned buffer (a direct DMA copy; the buffer lives as long as the
    block's rows that view it, then returns to torch's pinned-memory cache), on the CPU as they are."""
    if values.device.type != "cuda":
        return values
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    torch.cuda.current_stream(values.device).synchronize()
    return host


def first_look(ctx: SampleContext, index: int) -> tuple[_Block, dict[int, _Choice]]:
    """Block ``index`` with its slots' first accepted candidates (the screening that needs no denoised sample)."""
    block = _Block(list(ctx.plan.slots(index)))
    return block, _next_choices(ctx, block, list(block.slots))


def finish_block(ctx: SampleContext, model: FrozenDiffusionModel, block: _Block,
                 chosen: dict[int, _Choice]) -> tuple[list[dict[str, Any]], Counters]:
    """Denoise the first look's choices, then screen and denoise again the slots left without a sample (a miss, a
    near-copy) until each has one or is out of tries; the filled rows in slot order and the block's counters."""
    pending = list(block.slots)
    while True:
        if chosen:
            _denoise(model, ctx, block, chosen)
        pending = [s for s in pending if s in chosen and s not in block.rows and block.near.get(s, 0)
                   < ACCEPTED_PER_SAMPLE]
        if not pending:
            break
        chosen = _next_choices(ctx, block, pending)
    empty = [s for s in block.slots if s not in block.rows]
    block.counters.failed_slots = len(empty)
    block.counters.budget_exhausted = sum(1 for s in empty if block.attempts.get(s, 0) >= ctx.plan.tries)
    return [block.rows[s] for s in block.slots if s in block.rows], block.counters


def fill_block(ctx: SampleContext, model: FrozenDiffusionModel, index: int) -> tuple[dict[str, Any], Counters]:
    """The samples of block ``index`` (filled slots in slot order, as sample-array batches) and its counters."""
    rows, counters = finish_block(ctx, model, *first_look(ctx, index))
    return _batch(ctx, rows), counters


def _batch(ctx: SampleContext, rows: list[dict[str, Any]]) -> dict[str, Any]:
    shape = tuple(ctx.images.shape[1:])
    samples = np.stack([r["samples"] for r in rows]) if rows else np.empty((0, *shape), np.float32)
    parents = np.array([r["sample_parent"] for r in rows], dtype=np.int64)
    nearest = np.array([r["nearest"] for r in rows], dtype=np.int64)
    if rows:
        samples, physical = ctx.with_noise(samples, parents, nearest, [int(r["slot"]) for r in rows])
    else:
        physical = np.empty((0, *(shape if ctx.per_band else shape[1:])), np.float32)
    return {
        "samples": samples,
        "samples_physical": physical,
        "sample_latents": np.stack([r["sample_latents"] for r in rows]) if rows else np.empty((0, *shape), np.float32),
        "sample_seed": np.array([r["sample_seed"] for r in rows], dtype=np.int64),
        "sample_parent": parents.astype(np.int32),
        "sample_criteria": (np.stack([r["sample_criteria"] for r in rows]) if rows
                            else np.empty((0, 3))).astype(np.float32),
        "sample_nearest_input_distance": np.array([r["sample_nearest_input_distance"] for r in rows], np.float32),
    }


def run_blocks(ctx: SampleContext, model: FrozenDiffusionModel, append: Append, blocks: range,
               checkpoint: dict[str, Any] | None, progress: ProgressHook | None = None,
               written: int = 0, *, pipelined: bool | None = None,
               screening_threads: int = SCREENING_THREADS) -> Counters:
    """Fill ``blocks`` in order into ``append`` (each block one batch, committed with a checkpoint), starting at the
    checkpoint's next block; returns the counters of every block of the range (the checkpoint's included).

    ``pipelined``: the first look of block k + 1 is screened, and block k - 1 converted and appended, in threads
    while block k is denoised (:mod:`ood_core.pipeline.pipelined`); the same samples, counters and checkpoints as
    the serial order (``False``), bit for bit. None (default): pipelined when the network runs on CUDA, where the
    host's work would otherwise keep the GPU waiting; serial on the CPU, where the network's own threads keep every
    core busy and more threads only compete with them. ``screening_threads`` screen blocks in turn."""
    counters = Counters.from_dict((checkpoint or {}).get("counters"))
    start = int((checkpoint or {}).get("next_block", blocks.start))

    def look(index: int) -> tuple[_Block, dict[int, _Choice]]:
        return first_look(ctx, index)

    def fill(index: int, looked: tuple[_Block, dict[int, _Choice]]) -> tuple[list[dict[str, Any]], Counters]:
        return finish_block(ctx, model, *looked)

    def write(index: int, filled: tuple[list[dict[str, Any]], Counters]) -> None:
        rows, block_counters = filled
        batch = _batch(ctx, rows)
        counters.add(block_counters)
        written = append(batch, {"next_block": index + 1, "counters": counters.to_dict()})
        if progress is not None:
            progress("sample", written, ctx.plan.samples)

    indices = range(max(start, blocks.start), blocks.stop)
    if model.device.type == "cuda" if pipelined is None else pipelined:
        run_pipelined(indices, look, fill, write, device=model.device, preparers=screening_threads, adopt=_adopt)
    else:
        run_serial(indices, look, fill, write)
    return counters


def _adopt(looked: tuple[_Block, dict[int, _Choice]]) -> None:
    """The chosen candidates' device tensors, made on the screening thread's stream, are used on this one's."""
    stream = torch.cuda.current_stream()
    for choice in looked[1].values():
        choice.latent.record_stream(stream)
        choice.criteria.record_stream(stream)


# --------------------------------------------------------------------------------------------- shards


def prepare_shards(params: PipelineParameters, writer: RunWriter) -> list[tuple[int, int]]:
    """Give the run's sample arrays to ``params.shards`` shards (regions of whole blocks); once per run."""
    if writer.sample_regions:
        return writer.sample_regions
    plan = SlotPlan.of(params, recorded_batch_size(writer))
    regions = plan.regions(params.shards)
    writer.update_provenance(sharding={"shards": len(regions), "regions": [list(r) for r in regions],
                                       "block": plan.block, "started_unix": time.time()})
    assign_regions(writer, regions, plan.block)
    log.info("run %s: %d samples in %d shards of up to %d blocks of %d", writer.run_id, plan.samples, len(regions),
             max(len(b) for b in plan.shard_blocks(params.shards)), plan.block)
    return regions


def run_shard(params: PipelineParameters, model: FrozenDiffusionModel, shard: RegionWriter,
              progress: ProgressHook | None = None) -> dict[str, Any]:
    """Fill one shard of a run whose arrays went to shards (resuming after its committed blocks)."""
    index = shard.index
    if shard.done:
        return {"shard": index, "rows": shard.rows, "skipped": True}
    try:
        match_recorded_threads(shard, model)
        ctx = SampleContext(params, shard, model)
        blocks = ctx.plan.shard_blocks(params.shards)[index]
        counters = run_blocks(ctx, model, appender_of(shard), blocks, shard.checkpoint, progress, shard.rows)
        shard.complete()
    except BaseException:
        shard.abandon()
        raise
    return {"shard": index, "rows": shard.rows, "counters": counters.to_dict(), "skipped": False}


def merge_shards(writer: RunWriter) -> Counters:
    """Move the shards' samples together in the run (all must be done); returns their summed counters."""
    total, states = merge_regions(writer)
    counters = Counters()
    for state in states:
        counters.add(Counters.from_dict((state.checkpoint or {}).get("counters")))
    log.info("run %s: %d samples from %d shards merged", writer.run_id, total, len(states))
    return counters


def sampler_record(params: PipelineParameters, ctx: SampleContext, counters: Counters, written: int,
                   shards: int) -> dict[str, Any]:
    """The run's ``sampler`` provenance: band and configuration, the counters, the slot rules."""
    report = ctx.sampler.report().to_dict()
    delivered = counters.accepted
    report.update(tried=counters.tried, accepted=counters.accepted, delivered=delivered,
                  acceptance_rate=counters.accepted / counters.tried if counters.tried else 0.0,
                  budget_exhausted=counters.budget_exhausted > 0)
    warning = screening_warning(counters.tried, counters.accepted, params)
    if warning:
        log.warning("%s", warning)
    return {**report, "seed": params.seed, "requested": params.samples, "written": written, "warning": warning,
            "accepted_per_sample_limit": ACCEPTED_PER_SAMPLE, "tries_per_sample": ctx.plan.tries,
            "block": ctx.plan.block, "shards": shards, "empty_slots": counters.failed_slots,
            "slots_out_of_budget": counters.budget_exhausted, "near_copies_rejected": counters.near_copies,
            "stream": "one candidate stream per sample slot (slot_candidate_seed); blocks of 'block' slots"}


SCREENING_WARN_MIN_TRIED = 16
"""Fewer candidates than this say nothing about the acceptance rate."""


def screening_warning(tried: int, accepted: int, params: PipelineParameters) -> str | None:
    """A sentence when the geometric screening did not screen (every candidate accepted) or let nothing
    through, with what to change; None when the acceptance rate is strictly between 0 and 1."""
    if tried < SCREENING_WARN_MIN_TRIED or 0 < accepted < tried:
        return None
    given = params.given()
    fixed = [f"--{name}" for name in ("t0", "strategy", "prior") if name in given]
    calibrated = (" or leave " + "/".join(fixed) + " to the calibration") if fixed else ""
    if accepted == tried:
        return (f"the screening accepted all {tried} candidates: it did not screen (the band derived from the "
                f"shots is wider than the candidates' spread). Samples are as drawn from the prior; try "
                f"--prior ppca, a slerp strategy with a smaller mixing fraction{calibrated}")
    return (f"the screening accepted none of {tried} candidates: the candidates sit outside the band derived "
            f"from the shots. Try --strategy slerp_ood_prior (candidates nearer the shots), a lower --t0, "
            f"--prior ppca{calibrated}")
