"""Base-model training step time, split into data (patch sampling) and model (forward, backward, AdamW, EMA), for the
per-image patch loop (``PatchSampler``, "loop") against the batched sampler (``BatchedPatchSampler``, "batched"), at
one batch size on the available device, in one process so that the ratios compare like with like.

Per sampler and repeat, in milliseconds: ``--data-steps`` timed calls of ``Trainer.batch()`` (device synchronized),
``--model-steps`` timed ``Trainer.step(batch)`` on batches made beforehand, and ``--steps`` whole training steps back
to back with one synchronization at the end (the step time a training run sees: on a GPU the loop sampler's Python
work can overlap the device's work on the previous step). The samplers alternate within each repeat; figures are
medians over the repeats.

Usage: python bench/bench_training.py [--batch 16] [--device auto] [--dtype auto] [--repeats 3] [--json FILE]
(the architecture is the shipped base64's: TrainConfig's defaults). ``--model-steps 0 --steps 0``: data only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ood_core.base_model.training import TrainConfig, Trainer, resolve_setup


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, action: Callable[[], object], times: int) -> list[float]:
    """Seconds of each of ``times`` calls, the device synchronized before and after each."""
    seconds = []
    for _ in range(times):
        _sync(device)
        start = time.perf_counter()
        action()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(trainer: Trainer, data_steps: int, model_steps: int, steps: int) -> dict[str, float]:
    """Median data and model milliseconds per step, and the pipelined milliseconds per step (one sync at the
    end); with ``model_steps`` or ``steps`` 0 that figure is left out (data only: cheap on a CPU)."""
    device = trainer.setup.device
    figures = {"data_ms": statistics.median(_timed(device, trainer.batch, data_steps))}
    if model_steps:
        batches = [trainer.batch() for _ in range(model_steps)]
        figures["model_ms"] = statistics.median(_timed(device, lambda: trainer.step(batches.pop()), model_steps))
    if steps:
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step(trainer.batch())
        _sync(device)
        figures["step_ms"] = (time.perf_counter() - start) / steps
    return {key: seconds * 1e3 for key, seconds in figures.items()}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    trainers = {}
    for sampler in ("loop", "batched"):
        config = TrainConfig(batch_size=args.batch, device=args.device, dtype=args.dtype, sampler=sampler)
        trainers[sampler] = Trainer(config, resolve_setup(config))
        trainers[sampler].unet.train()
        for _ in range(2 if args.model_steps or args.steps else 0):  # warm-up: allocator, kernels, autocast
            trainers[sampler].step(trainers[sampler].batch())
        trainers[sampler].batch()
    runs: dict[str, list[dict[str, float]]] = {"loop": [], "batched": []}
    for repeat in range(args.repeats):
        order = ("loop", "batched") if repeat % 2 == 0 else ("batched", "loop")
        for sampler in order:
            runs[sampler].append(measure(trainers[sampler], args.data_steps, args.model_steps, args.steps))
            print(json.dumps({"repeat": repeat, "sampler": sampler,
                              **{k: round(v, 2) for k, v in runs[sampler][-1].items()}}), flush=True)
    setup = trainers["batched"].setup
    table = {sampler: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
             for sampler, rows in runs.items()}
    return {
        "device": setup.describe()["device_name"], "dtype": str(setup.dtype).removeprefix("torch."),
        "batch": args.batch, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "median": {s: {k: round(v, 2) for k, v in row.items()} for s, row in table.items()},
        "loop_over_batched": {k: round(table["loop"][k] / table["batched"][k], 2) for k in table["loop"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-steps", type=int, default=10)
    parser.add_argument("--model-steps", type=int, default=2, help="timed model steps per repeat (0: none)")
    parser.add_argument("--steps", type=int, default=3, help="pipelined whole steps per repeat (0: none)")
    parser.add_argument("--json", default=None, help="also write the summary here")
    args = parser.parse_args()
    summary = bench(args)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
