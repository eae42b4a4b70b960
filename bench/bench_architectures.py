"""Training throughput of base-model architectures on one CPU thread: images per second of a whole AdamW step.

Every architecture trains on the same batch (one channel, 64x64) in the same process, in alternating rounds, so
that load on the machine touches them alike; the figure is the median over rounds, and the ratio is against
``base64``'s architecture (widths 32 64 128 128, attention at level 2), measured beside it. Forward FLOPs per
image come from ``torch.utils.flop_counter``. Run it on an idle machine.

    PYTHONPATH=. .venv/bin/python bench/bench_architectures.py [--batch 16] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ood_core.base_model.training import TrainConfig, build_unet

ARCHITECTURES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "base64 (32 64 128 128, attn 2)": ((32, 64, 128, 128), (2,)),
    "sky64 (16 32 64 128, attn 3)": ((16, 32, 64, 128), (3,)),
    "16 32 48 64, attn 3": ((16, 32, 48, 64), (3,)),
    "16 32 64 128, no attention": ((16, 32, 64, 128), ()),
}


def forward_gflop(unet: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        unet(torch.randn(1, 1, 64, 64), torch.tensor([500]))
    return float(counter.get_total_flops()) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per architecture and round")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 64, 64)
    t = torch.randint(1000, (args.batch,))
    models = {}
    for name, (widths, attention) in ARCHITECTURES.items():
        unet = build_unet(TrainConfig(channels=1, block_out_channels=widths, attention_levels=attention))
        models[name] = (unet, torch.optim.AdamW(unet.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, (unet, optimizer) in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = (unet(x, t).sample - x).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
            times[name].append((time.perf_counter() - start) / args.steps)
    baseline = statistics.median(next(iter(times.values()))[1:])
    rows = []
    for name, (unet, _) in models.items():
        step = statistics.median(times[name][1:])
        rows.append({"architecture": name, "parameters": sum(p.numel() for p in unet.parameters()),
                     "forward_gflop": round(forward_gflop(unet), 3), "step_s": round(step, 4),
                     "images_per_s": round(args.batch / step, 2), "ratio_vs_base64": round(baseline / step, 2)})
    print(f"batch {args.batch}, one thread, median of {args.rounds} rounds of {args.steps} steps")
    print("| architecture | parameters | forward GFLOP | step (s) | images/s | x base64 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['architecture']} | {r['parameters']:,} | {r['forward_gflop']} | {r['step_s']} | "
              f"{r['images_per_s']} | {r['ratio_vs_base64']} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"batch": args.batch, "rounds": args.rounds, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
