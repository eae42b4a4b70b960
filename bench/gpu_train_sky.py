"""Time-boxed training of the simulated-sky base models on a lent GPU: several models at once, weights brought back.

One process per model trains on the same GPU (small UNets leave it mostly idle, so they overlap) for a fixed
wall time; the driver copies each model's latest checkpoint, slimmed (no optimizer; the EMA only where
``--ema-only`` names it), into the output folder every ``--copy-every`` seconds, split into parts under the
device tool's 16 MiB file limit, so a run stopped at its limit still brings back its last checkpoint. A run
whose previous checkpoint is given (``--resume DIR``: DIR/<name>.safetensors or its .partNN files, as brought
back) continues it. On the CPU with ``--small`` it trains tiny models for seconds (the script's own test).

    python bench/gpu_train_sky.py --out $OUT --seconds 420 [--resume models] [--runs sky64] [--small]

Reassemble here: ``python bench/gpu_train_sky.py --join DIR`` writes DIR/<name>/state.safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PART_BYTES = 15 * 1024 * 1024
RUNS: dict[str, dict[str, Any]] = {
    "sky64": {"channels": 1, "block_out_channels": (16, 32, 64, 128), "attention_levels": (3,)},
    "sky64wide": {"channels": 1, "block_out_channels": (32, 64, 128, 128), "attention_levels": (2,)},
    "sky64rgb": {"channels": 3, "block_out_channels": (16, 32, 64, 128), "attention_levels": (3,)},
}
DATA = ("sky-sim", "photos", "wheel-photos", "dead-leaves")


def train_config(name: str, small: bool, learning_rate: float = 6e-4) -> Any:
    from ood_core.base_model.training import TrainConfig

    arch = RUNS[name]
    if small:
        return TrainConfig(data=DATA, batch_size=4, checkpoint_every=2, total_steps=10**7, warmup_steps=2,
                           library={"psfs": 4, "galaxies": [8, 4, 2]}, device="auto", **arch)
    return TrainConfig(data=DATA, batch_size=512, learning_rate=learning_rate, warmup_steps=300, total_steps=10**7,
                       checkpoint_every=250, device="cuda", dtype="bfloat16", sampler="batched", **arch)


def worker(name: str, ckpt: Path, seconds: float, small: bool, log_file: Path, learning_rate: float) -> None:
    """Train one model for ``seconds`` of wall time in ``ckpt``; its loss and speed go to ``log_file``."""
    import torch

    from ood_core.base_model.training import train_base_model

    torch.set_num_threads(4)
    config = train_config(name, small, learning_rate)
    started = time.perf_counter()
    points: list[tuple[int, float, float]] = []

    def progress(step: int, end: int, loss: float) -> None:
        if step % 25 == 0 or not points:
            points.append((step, loss, time.perf_counter() - started))

    state = train_base_model(config, ckpt, max_seconds=seconds, progress=progress)
    log_file.write_text(json.dumps({"name": name, "config": config.to_dict(), "steps": state.step,
                                    "seconds": time.perf_counter() - started, "points": points,
                                    "checkpoint_losses": state.losses, "history": state.history}))


def data_speed(small: bool) -> dict[str, float]:
    """Milliseconds per batch of the simulated-sky sampler alone on this device (20 batches)."""
    import torch

    from ood_core.base_model.training_mix import sky_scenes

    config = train_config("sky64", small)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scenes = sky_scenes(config, device)
    generator = torch.Generator(device=device).manual_seed(0)
    scenes.sample(config.batch_size, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        scenes.sample(config.batch_size, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"batch": config.batch_size, "ms_per_batch": (time.perf_counter() - start) / 20 * 1000}


def bring_back(name: str, ckpt: Path, out: Path, ema_only: bool) -> None:
    """The run's latest checkpoint, slimmed, as out/<name>.safetensors.partNN (each under 16 MiB)."""
    from ood_core.base_model.checkpoint import load_checkpoint, save_checkpoint
    from ood_core.base_model.training import CHECKPOINT_FILE, slim_checkpoint

    source = ckpt / CHECKPOINT_FILE
    if not source.exists():
        return
    slim = ckpt / "slim.safetensors"
    save_checkpoint(slim, slim_checkpoint(load_checkpoint(source), keep_live=not ema_only))
    data = slim.read_bytes()
    for old in out.glob(f"{name}.safetensors.part*"):
        old.unlink()
    for k in range(0, len(data), PART_BYTES):
        part = out / f"{name}.safetensors.part{k // PART_BYTES:02d}"
        part.with_suffix(".tmp").write_bytes(data[k : k + PART_BYTES])
        part.with_suffix(".tmp").replace(part)


def join(folder: Path) -> None:
    """Reassemble brought-back parts into folder/<name>/state.safetensors."""
    names = sorted({p.name.split(".safetensors")[0] for p in folder.glob("*.safetensors.part*")})
    for name in names:
        parts = sorted(folder.glob(f"{name}.safetensors.part*"))
        target = folder / name / "state.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join(p.read_bytes() for p in parts))
        print(f"{target}: {len(parts)} part(s), {target.stat().st_size / 2**20:.1f} MiB")


def seed_from(resume: Path | None, name: str, ckpt: Path, small: bool) -> None:
    """Put a previous checkpoint of ``name`` into the run's checkpoint folder: a checkpoint file, its parts, or an
    exported model folder (``models/sky64``: its EMA weights train on, the optimizer restarts)."""
    from ood_core.base_model.training import warm_start_from_export

    ckpt.mkdir(parents=True, exist_ok=True)
    if resume is None:
        return
    whole = resume / name / "state.safetensors"
    parts = sorted(resume.glob(f"{name}.safetensors.part*"))
    if whole.exists():
        shutil.copy(whole, ckpt / "state.safetensors")
    elif parts:
        (ckpt / "state.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))
    elif (resume / name / "training_log.json").exists():
        warm_start_from_export(resume / name, ckpt, train_config(name, small))


def drive(args: argparse.Namespace) -> int:
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"data_speed": data_speed(args.small), "runs": {}}
    (out / "train_sky.json").write_text(json.dumps(summary, indent=1))
    procs = {}
    for name in args.runs:
        ckpt = work / name
        seed_from(Path(args.resume) if args.resume else None, name, ckpt, args.small)
        procs[name] = subprocess.Popen([sys.executable, __file__, "--worker", name, "--work", str(work),
                                        "--seconds", str(args.seconds), "--learning-rate", str(args.learning_rate)]
                                       + (["--small"] if args.small else []))
    last = time.perf_counter()
    while any(p.poll() is None for p in procs.values()):
        time.sleep(2)
        if time.perf_counter() - last > args.copy_every:
            last = time.perf_counter()
            for name in args.runs:
                bring_back(name, work / name, out, name in args.ema_only)
    for name, proc in procs.items():
        bring_back(name, work / name, out, name in args.ema_only)
        log_file = work / f"{name}.log.json"
        summary["runs"][name] = json.loads(log_file.read_text()) if log_file.exists() else {"rc": proc.returncode}
        summary["runs"][name]["rc"] = proc.returncode
    (out / "train_sky.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({n: {k: r.get(k) for k in ("steps", "seconds", "rc")} for n, r in summary["runs"].items()}))
    return max(p.returncode for p in procs.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "out/gpu_train_sky"))
    parser.add_argument("--work", default="/tmp/gpu_train_sky")
    parser.add_argument("--seconds", type=float, default=420.0)
    parser.add_argument("--copy-every", type=float, default=90.0)
    parser.add_argument("--learning-rate", type=float, default=6e-4)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--ema-only", nargs="*", default=["sky64wide", "sky64rgb"])
    parser.add_argument("--resume", help="folder of checkpoints brought back earlier (<name>.safetensors.partNN, "
                                         "<name>/state.safetensors) or of model folders (models: <name>/ exported)")
    parser.add_argument("--small", action="store_true", help="tiny models and library, for a CPU try")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--join", help="reassemble brought-back parts in this folder and exit")
    args = parser.parse_args()
    if args.join:
        join(Path(args.join))
        return 0
    if args.worker:
        worker(args.worker, Path(args.work) / args.worker, args.seconds, args.small,
               Path(args.work) / f"{args.worker}.log.json", args.learning_rate)
        return 0
    return drive(args)


if __name__ == "__main__":
    raise SystemExit(main())
