"""Pipeline runs in child processes, for the fault-injection test to SIGKILL at random moments.

Usage: ``python tests/fault_run_proc.py --make-model MODEL``  writes the tiny model folder, then
       ``python tests/fault_run_proc.py STORE MODEL INPUT...``  serves runs.

Serving: the process imports the library and loads the model once, prints ``READY``, then for each line
``RUN`` or ``RESUME <run_id>`` on stdin forks a child that performs the whole run with
``ood_core.pipeline.run_in_process`` and prints ``PID <pid>`` at once (the child prints ``DONE <run_id>``
when its run is complete). The child is reaped only when the next line, ``REAP``, arrives, and then
``EXIT <pid> <status>`` is printed (status = the signal number, negated, when killed): until then its pid
cannot be reused, so the test's SIGKILL can only ever reach the child it means.
Forking from a loaded process keeps each round's start at milliseconds instead of the ~10 s of importing
torch, so N kills fit a CI budget; each child is a real process that writes the store and dies by SIGKILL.

The model is a tiny randomly initialised UNet (3x16x16, seeded) and the settings are small (few DDIM
steps, few samples): a run's work takes about a second on one CPU core. They are the same for every run,
so every complete run must hold the same samples.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SETTINGS = {"samples": 4, "steps": 6, "t0": 300, "reference_count": 4, "device": "cpu", "batch_size": 8,
            "prior": "ppca", "seed": 3}


def make_model(folder: Path) -> None:
    """A tiny seeded UNet2DModel (3x16x16) and its DDPM schedule, saved as safetensors."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=4).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(folder / "scheduler")


def _child(params: object, resume: str | None) -> None:
    from ood_core.pipeline import run_in_process

    code = 1
    try:
        result = run_in_process(params, resume=resume)  # type: ignore[arg-type]
        print("DONE", result.run_id, flush=True)
        code = 0
    finally:
        os._exit(code)  # never return into the server loop


def serve(store: str, model: str, inputs: list[str]) -> None:
    import torch

    from ood_core.method.model import cached_model
    from ood_core.pipeline import PipelineParameters

    torch.set_num_threads(1)  # on a shared 2-core machine, 2 spinning threads ran 100x slower than 1
    params = PipelineParameters(inputs=inputs, store=store, model=model, **SETTINGS)
    cached_model(params.model, params.device, params.dtype)
    print("READY", flush=True)
    while line := sys.stdin.readline():
        words = line.split()
        if not words:
            continue
        resume = words[1] if words[0] == "RESUME" else None
        pid = os.fork()
        if pid == 0:
            _child(params, resume)
        print("PID", pid, flush=True)
        sys.stdin.readline()  # REAP
        _, status = os.waitpid(pid, 0)
        print("EXIT", pid, -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--make-model"]:
        make_model(Path(argv[1]))
        return 0
    serve(argv[0], argv[1], argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
