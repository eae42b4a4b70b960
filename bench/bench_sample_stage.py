"""The sample stage's host-side cost on the CPU (issue 22 item 2): the real stage with a stand-in network.

The stand-in is the shipped one-channel model (``models/mono64``, 1 x 64 x 64) whose ``predict_noise`` returns one
fixed field of the input's shape (a broadcast view: no cost): every other line of the stage runs as in ``ood run``
(SampleContext, run_blocks, the GeometricSampler's screening, DDIM's step loop, the novelty rule, conversion to
physical units, matched noise when on, the RunWriter with its background appender into a temporary zarr store).
The run before it (12 demo skies, inversion, 64 reference latents, prior) is made with the same stand-in, which
accepts every candidate and makes about a third near-copies (its samples are linear in their latents); with
``--prep real`` it is made with mono64 itself: real latents, acceptance (0.4-0.6) and near-copies (about none), some
10 minutes on a 2-core CPU, kept in ``--prepared DIR`` for later calls.

What counts as host-side: everything but the work that runs on the GPU in a CUDA run, which is measured and shown
apart: the network (here the stand-in), DDIM's update arithmetic (``ddim_generate`` less the network), and the
screening's arithmetic on the device (``slerp`` of the candidates and ``CriteriaGeometry.criteria``, the sampler's
device being the model's). Host-side are the candidate draws (one generator per candidate, on the CPU in a CUDA run
too), the Python bookkeeping of slots and blocks, the novelty rule (on the CPU), conversion to physical units and
matched noise, the caller's part of the store append and the background appender thread that writes the store.

Figures, serial (``pipelined=False``) and pipelined in the same process, each the median of ``--repeats`` runs on a
fresh copy of the prepared run:

- host CPU seconds per image x step: the process CPU time of the stage less the GPU parts' CPU time, over the images
  denoised x DDIM steps; the ceiling is its inverse, the images x steps / s the stage would reach on an infinitely
  fast network with one core for all its host work;
- pipelined, the busiest thread's host CPU time (the screening threads, network thread, conversion thread, store
  appender thread): the ceiling when each thread has a core of its own (a GPU host has 16); and the wall-clock ratio
  pipelined/serial on this machine (2 cores, shared: the load is printed beside).

Usage: .venv/bin/python bench/bench_sample_stage.py [--samples 4096] [--batch 1024] [--repeats 3] [--prep standin]
       [--prepared DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from astropy.io import fits

from ood_core.base_model.demo_skies import SkyConfig, make_sky
from ood_core.method import acceptance, ddim, sampler
from ood_core.method.model import FrozenDiffusionModel, load_model
from ood_core.method.novelty import NoveltyCheck
from ood_core.pipeline import prepare_run, sample_stage, stages
from ood_core.pipeline.config import DEFAULT_STEPS, DEFAULT_T0, PipelineParameters, default_model_path
from ood_core.store import RunWriter, list_runs
from ood_core.store.appender import BackgroundAppender

GPU_PARTS = ("network", "ddim_arithmetic", "slerp", "criteria")


class StandIn(FrozenDiffusionModel):
    """mono64's shapes and schedule, a network of negligible cost: eps is one fixed N(0, 1) field, returned as a
    broadcast view (no allocation per step)."""

    FIELD_SEED = 7

    def predict_noise(self, x: torch.Tensor, timestep: int) -> torch.Tensor:
        field = getattr(self, "_field", None)
        if field is None or field.shape[1:] != x.shape[1:]:
            generator = torch.Generator().manual_seed(self.FIELD_SEED)
            field = torch.randn((1, *x.shape[1:]), generator=generator).to(self.device)
            object.__setattr__(self, "_field", field)
        return field.expand(x.shape)


class Clock:
    """CPU seconds (this thread's) and wall seconds per (part, thread name), from wrapped functions."""

    def __init__(self) -> None:
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.wall: dict[tuple[str, str], float] = defaultdict(float)
        self.lock = threading.Lock()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            key = (name, threading.current_thread().name)
            with self.lock:
                self.cpu[key] += time.thread_time() - cpu
                self.wall[key] += time.perf_counter() - wall

    def wrap(self, owner: Any, attribute: str, name: str) -> Callable[[], None]:
        """Time ``owner.attribute`` as ``name``; returns the undo."""
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)
        return lambda: setattr(owner, attribute, original)

    def total(self, name: str, table: dict[tuple[str, str], float] | None = None) -> float:
        return sum(v for (part, _), v in (table or self.cpu).items() if part == name)

    def by_thread(self, name: str) -> dict[str, float]:
        return {thread: v for (part, thread), v in self.cpu.items() if part == name}


def write_skies(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        data, header = make_sky(SkyConfig(size=128, nan_hole_probability=0.0), 1000 + i)
        fits.PrimaryHDU(data, header).writeto(folder / f"sky_{i:03d}.fits")


def prepared(work: Path, args: argparse.Namespace, standin: StandIn, real: FrozenDiffusionModel | None
             ) -> PipelineParameters:
    """A run of 12 demo skies through its prior stage, in ``work/base.zarr`` (kept from an earlier call: reused)."""
    params = PipelineParameters(inputs=[str(work / "inputs")], store=str(work / "base.zarr"), samples=args.samples,
                                batch_size=args.batch, t0=DEFAULT_T0, steps=args.steps, device="cpu", seed=0,
                                calibrate=False, prior=args.prior, noise=args.noise, reference_count=64,
                                candidate_budget=max(20_000, 100 * args.samples))
    if (work / "base.zarr").exists():
        (run,) = list_runs(params.store)
        recorded = RunWriter.open(params.store, run.run_id).provenance
        if recorded["compute"]["batch_size"] != args.batch or recorded["inversion"]["steps"] != args.steps:
            raise SystemExit(f"{work} holds a run prepared with another --batch or --steps: give another --prepared")
        return params
    write_skies(work / "inputs", 12)
    maker = real or standin
    writer = RunWriter.open(params.store, prepare_run(params, maker))
    stages.stage_invert(params, maker, writer)
    stages.stage_prior(params, maker, writer)
    return params


def instrument(clock: Clock) -> list[Callable[[], None]]:
    """Wrap the stage's parts; the undos."""
    undo = [
        clock.wrap(StandIn, "predict_noise", "network"),
        clock.wrap(ddim, "ddim_generate", "ddim_generate"),
        clock.wrap(sampler, "slerp", "slerp"),
        clock.wrap(acceptance.CriteriaGeometry, "criteria", "criteria"),
        clock.wrap(sampler.GeometricSampler, "screen", "screen"),
        clock.wrap(NoveltyCheck, "evaluate", "novelty"),
        clock.wrap(sample_stage, "first_look", "first_look"),
        clock.wrap(sample_stage, "finish_block", "finish_block"),
        clock.wrap(sample_stage, "_batch", "convert"),
        clock.wrap(BackgroundAppender, "_add", "store_thread"),
        clock.wrap(BackgroundAppender, "_write_staged", "store_thread"),
        clock.wrap(BackgroundAppender, "_trim", "store_thread"),
    ]
    return undo


def one_run(params: PipelineParameters, model: StandIn, work: Path, label: str, pipelined: bool
            ) -> dict[str, Any]:
    """The sample stage once on a fresh copy of the prepared run; wall, CPU, parts."""
    store = work / f"{label}.zarr"
    shutil.copytree(params.store, store)
    (run,) = list_runs(str(store))
    copy = params.model_copy(update={"store": str(store)})
    writer = RunWriter.open(copy.store, run.run_id)
    ctx = sample_stage.SampleContext(copy, writer, model)
    clock = Clock()
    undo = instrument(clock)
    append = sample_stage.appender_of(writer)

    def timed_append(batch: dict[str, Any], checkpoint: dict[str, Any]) -> int:
        with clock.part("append_call"):
            return append(batch, checkpoint)

    try:
        wall, cpu = time.perf_counter(), time.process_time()
        counters = sample_stage.run_blocks(ctx, model, timed_append, range(ctx.plan.blocks), None, pipelined=pipelined)
        writer.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        for restore in undo:
            restore()
    writer.close()
    shutil.rmtree(store)
    denoised = counters.accepted
    return {"wall": wall, "cpu": cpu, "clock": clock, "denoised": denoised, "written": writer.n_samples,
            "counters": counters, "work": denoised * ctx.steps, "steps": ctx.steps}


def gpu_cpu(clock: Clock, thread: str | None = None) -> float:
    """CPU seconds of the parts a CUDA run does on the GPU (all threads, or one)."""
    def of(name: str) -> float:
        return clock.by_thread(name).get(thread, 0.0) if thread else clock.total(name)
    return of("ddim_generate") + of("slerp") + of("criteria")


def thread_loads(clock: Clock) -> dict[str, float]:
    """Host CPU seconds per pipeline thread (GPU parts taken out), by what the thread does."""
    loads: dict[str, float] = {}
    for thread, seconds in clock.by_thread("first_look").items():
        loads[f"screening ({thread})"] = seconds - gpu_cpu(clock, thread)
    loads["network thread"] = clock.by_thread("finish_block").get("MainThread", 0.0) - gpu_cpu(clock, "MainThread")
    finishing = "ood-pipeline-finish"
    loads["conversion + append"] = (clock.by_thread("convert").get(finishing, 0.0)
                                    + clock.by_thread("append_call").get(finishing, 0.0))
    loads["store appender"] = clock.total("store_thread")
    return loads


def report(label: str, runs: list[dict[str, Any]]) -> dict[str, float]:
    work = runs[0]["work"]
    host = statistics.median(r["cpu"] - gpu_cpu(r["clock"]) for r in runs)
    wall = statistics.median(r["wall"] for r in runs)
    wall_host = statistics.median(r["wall"] - r["clock"].total("ddim_generate", r["clock"].wall) for r in runs)
    first = runs[len(runs) // 2]["clock"]
    parts = {name: statistics.median(r["clock"].total(name) for r in runs)
             for name in ("network", "ddim_generate", "slerp", "criteria", "screen", "first_look", "novelty",
                          "convert", "append_call", "store_thread")}
    print(f"{label}: wall {wall:.2f} s, process CPU {statistics.median(r['cpu'] for r in runs):.2f} s, host CPU "
          f"{host:.2f} s = {1e6 * host / work:.2f} us per image x step -> ceiling {work / host:,.0f} images x "
          f"steps / s (wall less DDIM: {work / wall_host:,.0f})")
    print("  CPU seconds by part (medians; 'screen' holds slerp and criteria, 'first_look' the first screening of "
          "each block): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    host_parts = {"screening, host part (draws, bookkeeping)": parts["screen"] - parts["slerp"] - parts["criteria"],
                  "novelty": parts["novelty"], "conversion + noise": parts["convert"],
                  "store append (caller)": parts["append_call"], "store appender thread": parts["store_thread"]}
    print("  host us per image x step: " + ", ".join(f"{k} {1e6 * v / work:.2f}" for k, v in host_parts.items())
          + f"; GPU parts: DDIM arithmetic {1e6 * (parts['ddim_generate'] - parts['network']) / work:.2f}, "
          f"screening arithmetic {1e6 * (parts['slerp'] + parts['criteria']) / work:.2f}")
    loads = thread_loads(first) if label == "pipelined" else {}
    if loads:
        busiest = max(loads.values())
        print("  host CPU seconds per thread: " + ", ".join(f"{k} {v:.2f}" for k, v in loads.items())
              + f" -> busiest {busiest:.2f} s: ceiling {work / busiest:,.0f} images x steps / s with a core per thread")
    return {"wall": wall, "host": host}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1024, help="block = batch (a GPU's, not the CPU's 16)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prior", choices=("scalar", "ppca"), default="ppca", help="ppca: as bench/gpu_check.py")
    parser.add_argument("--noise", choices=("on", "off"), default="off")
    parser.add_argument("--prep", choices=("standin", "real"), default="standin")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the stage's own)")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="folder for the prepared run, kept and reused by later calls (--prep real takes ~10 min)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_model(default_model_path(), device="cpu")
    standin = StandIn(**{name: getattr(base, name) for name in base.__dataclass_fields__})
    work = Path(tempfile.mkdtemp(prefix="bench_sample_stage_"))
    try:
        started = time.perf_counter()
        params = prepared(args.prepared or work, args, standin, base if args.prep == "real" else None)
        print(f"samples={args.samples} block={args.batch} steps={args.steps} t0={DEFAULT_T0} prior={args.prior} "
              f"noise={args.noise} prep={args.prep} ({time.perf_counter() - started:.1f} s) torch threads="
              f"{torch.get_num_threads()} cores={os.cpu_count()} load before {os.getloadavg()}")
        results: dict[str, list[dict[str, Any]]] = {"serial": [], "pipelined": []}
        for rep in range(args.repeats):
            for label in ("serial", "pipelined") if rep % 2 == 0 else ("pipelined", "serial"):
                results[label].append(one_run(params, standin, work, f"{label}{rep}", label == "pipelined"))
        run = results["serial"][0]
        print(f"denoised {run['denoised']} images for {run['written']} samples ({run['counters']}), "
              f"{run['work']:,} images x steps per run, {args.repeats} runs each (medians)")
        serial, piped = report("serial", results["serial"]), report("pipelined", results["pipelined"])
        print(f"wall ratio pipelined/serial {piped['wall'] / serial['wall']:.2f} (speed-up "
              f"{serial['wall'] / piped['wall']:.2f}x on this machine), load after {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
