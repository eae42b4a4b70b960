"""The device check of issue 12, the figures half (bench/gpu_check.sh runs the CUDA tests first, then this).

1. FLOPs of one UNet forward per image, counted by ``torch.utils.flop_counter``.
2. Throughput of the project's own DDIM path (``ddim_generate``, output kept on the device) in images x steps / s,
   and the achieved TFLOP/s, for: float32 batch 16 (the old default), float32 batch 1024, bfloat16 batch 1024,
   bfloat16 + channels_last + torch.compile batch 1024 (compile time reported apart).
3. A whole run of 10^4 samples through ``run_in_process`` (the stages the Prefect flow runs, without Prefect) on
   the project's demo skies, with the run's defaults on this device (bfloat16 guarded, batch size from free memory,
   channels_last) and torch.compile: wall time per stage from its provenance, and the generation rate inside
   the sample stage.
4. Base-model training throughput (issue 10, item 3; about 30 s): ms per step at batch 256 with the training
   defaults on this device (bfloat16 autocast on CUDA), data apart from model, for the per-image patch loop
   against the batched sampler (``bench/bench_training.py`` has the full benchmark).

Writes everything to one JSON. Without CUDA (or with --small) every size is tiny, so it runs on a CPU in minutes.
Usage: python bench/gpu_check.py --out gpu_check.json [--small] [--cuda-tests junit.xml] [--samples N]
       [--only training]   (only section 4)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_training import measure  # bench/ is this script's folder, first on sys.path

from ood_core.base_model.demo_skies import write_demo_skies
from ood_core.base_model.training import TrainConfig, Trainer
from ood_core.method import ddim
from ood_core.method.model import FrozenDiffusionModel, load_model
from ood_core.pipeline import PipelineParameters, run_in_process
from ood_core.store import open_run

MODEL = Path(__file__).resolve().parents[1] / "models" / "base64"


def flops_per_image(model: FrozenDiffusionModel) -> int:
    """FLOPs of one forward pass of the UNet for one image (multiply-add = 2 FLOPs)."""
    x = torch.zeros((1, model.channels, model.resolution, model.resolution), device=model.device)
    with FlopCounterMode(display=False) as counter:
        model.predict_noise(x, model.num_train_timesteps // 2)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(model: FrozenDiffusionModel, batch: int, images: int, steps: int, flops: int) -> dict[str, Any]:
    """images x steps / s of ddim_generate at ``batch``, after one warm-up call (which compiles a compiled model)."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((images, model.channels, model.resolution, model.resolution), generator=generator)
    latents = latents.to(model.device)
    grid = ddim.timestep_grid(600, steps, model.num_train_timesteps)
    _sync(model.device)
    start = time.perf_counter()
    ddim.ddim_generate(model, latents[:batch], ddim.timestep_grid(600, 1, model.num_train_timesteps),
                       batch_size=batch, output="device")
    _sync(model.device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    ddim.ddim_generate(model, latents, grid, batch_size=batch, output="device")
    _sync(model.device)
    seconds = time.perf_counter() - start
    rate = images * steps / seconds
    return {"batch": batch, "images": images, "steps": steps, "seconds": round(seconds, 3),
            "images_x_steps_per_s": round(rate, 1), "tflops": round(rate * flops / 1e12, 2),
            "warmup_s": round(warmup, 2)}


def throughput_table(device: str, small: bool, flops: int) -> list[dict[str, Any]]:
    big = 8 if small else 1024
    settings = [  # (name, dtype, channels_last, compile, batch)
        ("float32, batch 16" if not small else "float32, batch 2", "float32", False, False, 2 if small else 16),
        (f"float32, batch {big}", "float32", False, False, big),
        (f"bfloat16, batch {big}", "bfloat16", False, False, big),
        (f"bfloat16 + channels_last + torch.compile, batch {big}", "bfloat16", True, True, big),
    ]
    rows = []
    for name, dtype, channels_last, compile_, batch in settings:
        if device == "cpu" and dtype != "float32":
            rows.append({"setting": name, "skipped": "no CUDA: reduced precision and compile are CUDA settings"})
            continue
        model = load_model(MODEL, device=device, dtype=dtype, compile=compile_, channels_last=channels_last)
        images = batch * (2 if small else 4) if batch > 16 else (8 if small else 512)
        row = {"setting": name, **throughput(model, batch, images, 2 if small else 10, flops)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def sample_run(device: str, small: bool, samples: int, workdir: Path) -> dict[str, Any]:
    """One whole run: demo skies in, ``samples`` samples out; wall time per stage and the generation rate."""
    skies = write_demo_skies(workdir / "skies", n=12, seed=0)
    store = workdir / "store.zarr"
    params = PipelineParameters(
        inputs=[str(p) for p in skies], store=str(store), samples=samples, steps=2 if small else 40, t0=600,
        prior="ppca", candidate_budget=max(20_000, 100 * samples), reference_count=16 if small else 64,
        device=device, compile=device == "cuda", seed=0,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run_in_process(params)
    wall = time.perf_counter() - start
    record = open_run(str(store), result.run_id, chunks=None).attrs["ood_run"]
    sampler = record["sampler"]
    generated = int(sampler.get("delivered") or 0)  # accepted candidates denoised (near-copies included)
    sample_s = float(record["timings"].get("sample") or 0.0)
    report = {
        "samples_requested": samples, "samples_written": result.n_samples, "steps": params.steps,
        "wall_s": round(wall, 2),
        "timings_s": record["timings"], "precision": record.get("precision"), "compute": record.get("compute"),
        "acceptance_rate": sampler.get("acceptance_rate"), "candidates_tried": sampler.get("tried"),
        "images_denoised": generated,
        "sample_stage_images_x_steps_per_s": round(generated * params.steps / sample_s, 1) if sample_s else None,
        "median_reconstruction_psnr_db": result.median_psnr_db,
    }
    if device == "cuda":
        report["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return report


def training_throughput(device: str, small: bool) -> dict[str, Any]:
    """ms per training step (data, model, pipelined), loop vs batched patch sampler, at batch 256 (small: 4)."""
    batch = 4 if small else 256
    rows: dict[str, Any] = {"batch": batch}
    for sampler in ("loop", "batched"):
        trainer = Trainer(TrainConfig(batch_size=batch, device=device, sampler=sampler))
        trainer.unet.train()
        for _ in range(3):  # warm-up
            trainer.step(trainer.batch())
        figures = measure(trainer, 2 if small else 10, 1 if small else 10, 1 if small else 20)
        rows[sampler] = {**trainer.setup.describe(), **{k: round(v, 2) for k, v in figures.items()}}
        print(json.dumps({"training": rows[sampler]}), flush=True)
        del trainer
    rows["loop_over_batched"] = {k: round(rows["loop"][k] / rows["batched"][k], 2)
                                 for k in ("data_ms", "model_ms", "step_ms")}
    return rows


def cuda_test_summary(junit: str | None) -> dict[str, Any] | None:
    if not junit or not Path(junit).is_file():
        return None
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {"tests": int(suite.get("tests", 0)), "failures": int(suite.get("failures", 0)),
            "errors": int(suite.get("errors", 0)), "skipped": int(suite.get("skipped", 0)), "failed": failed,
            "seconds": float(suite.get("time", 0.0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--small", action="store_true", help="tiny sizes (automatic without CUDA)")
    parser.add_argument("--samples", type=int, default=None, help="samples of the whole run (default 10000)")
    parser.add_argument("--cuda-tests", default=None, help="junit XML of the CUDA tests, to include their result")
    parser.add_argument("--only", choices=["training"], default=None, help="run only this section")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = args.small or device == "cpu"
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or 'x86'})",
        "torch": torch.__version__, "python": platform.python_version(), "small": small,
        "cuda_tests": cuda_test_summary(args.cuda_tests),
    }
    if args.only == "training":
        report["training"] = training_throughput(device, small)
        report["total_s"] = round(time.perf_counter() - started, 1)
        Path(args.out).write_text(json.dumps(report, indent=2))
        return
    plain = load_model(MODEL, device=device, dtype="float32", channels_last=False)
    report["flops_per_image_forward"] = flops_per_image(plain)
    print(f"{report['device']}: {report['flops_per_image_forward'] / 1e9:.2f} GFLOP per image forward", flush=True)
    del plain
    report["throughput"] = throughput_table(device, small, report["flops_per_image_forward"])
    samples = args.samples or (40 if small else 10_000)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        report["run"] = sample_run(device, small, samples, Path(tmp))
    print(json.dumps(report["run"]), flush=True)
    report["training"] = training_throughput(device, small)
    report["total_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['total_s']} s)")


if __name__ == "__main__":
    main()
